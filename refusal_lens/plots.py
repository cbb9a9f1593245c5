"""Plotly figures for reports. Every figure is saved with :func:`save_figure`."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .paths import atomic_write_bytes, atomic_write_text

__all__ = ["save_figure", "candidate_scores_figure", "refusal_rates_figure"]

_STATIC_OK: bool | None = None  # whether static (PNG) export works; probed once


def save_figure(fig: go.Figure, path_stem: str | Path, png: bool = True) -> list[Path]:
    """Write ``<stem>.html`` always, and ``<stem>.png`` when static export works.

    The HTML loads ``plotly.min.js`` from its own folder (written there once, from the installed
    plotly), so it works offline without embedding 4 MB of JavaScript in every figure.

    PNG export needs kaleido (and a browser it can drive); without it the PNG is skipped with a
    one-line message on stderr. Returns the written paths.
    """
    global _STATIC_OK
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".html", ".png") else stem
    js = stem.parent / "plotly.min.js"
    if not js.is_file():
        from plotly.offline import get_plotlyjs

        atomic_write_text(js, get_plotlyjs())
    out = [atomic_write_text(stem.with_suffix(".html"),
                             fig.to_html(include_plotlyjs="directory", full_html=True))]
    if png and _STATIC_OK is not False:
        try:
            data = fig.to_image(format="png", scale=2)
        except Exception as err:  # kaleido missing or unable to start
            _STATIC_OK = False
            print(f"[refusal_lens] PNG export skipped ({type(err).__name__}: "
                  f"{str(err).splitlines()[0] if str(err) else 'no details'}); HTML written.",
                  file=sys.stderr)
        else:
            _STATIC_OK = True
            out.append(atomic_write_bytes(stem.with_suffix(".png"), data))
    return out


def _grid(rows: Sequence[dict[str, Any]], key: str, layers: list[int], positions: list[int]):
    z = [[None] * len(positions) for _ in layers]
    for r in rows:
        v = r.get(key)
        if r["layer"] in layers and isinstance(v, (int, float)) and math.isfinite(v):
            z[layers.index(r["layer"])][positions.index(r["position"])] = v
    return z


def candidate_scores_figure(
    candidates: Sequence[dict[str, Any]], position_labels: Sequence[str] | None = None,
    chosen: tuple[int, int] | None = None, title: str = "Candidate directions",
) -> go.Figure:
    """Heatmaps (layer x post-instruction position) of screen bypass, bypass, induce and KL.

    ``candidates``: rows with ``layer``, ``position``, ``screen_bypass``, ``bypass``, ``induce``,
    ``kl`` (as in ``SelectionResult.table()``); blank cells were not scored.
    """
    layers = sorted({r["layer"] for r in candidates})
    positions = sorted({r["position"] for r in candidates})
    labels = [f"{p}: {position_labels[i]!s}" if position_labels and len(position_labels)
              == len(positions) else str(p) for i, p in enumerate(positions)]
    panels = [("screen_bypass", "bypass (screen)", "RdBu_r"), ("bypass", "bypass (val)", "RdBu_r"),
              ("induce", "induce (val)", "RdBu"), ("kl", "KL (val)", "Viridis")]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels],
                        shared_yaxes=True, horizontal_spacing=0.06)
    for i, (key, name, scale) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(
            z=_grid(candidates, key, layers, positions), x=labels, y=layers, colorscale=scale,
            zmid=0 if key != "kl" else None, name=name,
            colorbar=dict(x=0.205 * i + 0.06 * (i - 1) + 0.005, len=0.9, thickness=10),
            hovertemplate="layer %{y}<br>position %{x}<br>" + name + " %{z:.3f}<extra></extra>",
        ), row=1, col=i)
        if chosen is not None and chosen[1] in positions:
            fig.add_trace(go.Scatter(
                x=[labels[positions.index(chosen[1])]], y=[chosen[0]], mode="markers",
                marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                name="chosen", showlegend=i == 1), row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(tickangle=45)
    fig.update_layout(title=title, height=max(400, 18 * len(layers) + 200), width=1400)
    return fig


_ARM_LABELS = {"baseline": "baseline", "ablation": "ablation", "random_ablation": "random ablation",
               "orthogonalized": "orthogonalized", "random_orthogonalized": "random orthogonalized",
               "addition": "addition", "random_addition": "random addition"}


def refusal_rates_figure(rates: dict[str, dict[str, float]], title: str = "Refusal rates (95% CI)"
                         ) -> go.Figure:
    """Grouped bars with bootstrap CIs: harmful prompts (baseline / ablation / orthogonalization)
    and harmless prompts (baseline / addition), each intervention beside its random control.

    ``rates``: arm key -> ``{"rate", "ci_low", "ci_high"}``; keys ``baseline_harmful``,
    ``baseline_harmless`` and any of the intervention arms.
    """
    groups = [("harmful prompts", "baseline_harmful",
               ["ablation", "orthogonalized"]),
              ("harmless prompts", "baseline_harmless", ["addition"])]
    fig = go.Figure()
    series: dict[str, tuple[list, list, list, list]] = {}

    def put(series_name: str, group: str, r: dict[str, float]) -> None:
        xs, ys, up, down = series.setdefault(series_name, ([], [], [], []))
        xs.append(group)
        ys.append(r["rate"])
        up.append(max(0.0, r["ci_high"] - r["rate"]))
        down.append(max(0.0, r["rate"] - r["ci_low"]))

    for group, base_key, arms in groups:
        if base_key in rates:
            put("baseline", group, rates[base_key])
        for arm in arms:
            for key in (arm, f"random_{arm}"):
                if key in rates:
                    put(_ARM_LABELS[key], group, rates[key])
    for name, (xs, ys, up, down) in series.items():
        fig.add_trace(go.Bar(
            name=name, x=xs, y=ys, text=[f"{y:.2f}" for y in ys], textposition="outside",
            error_y=dict(type="data", array=up, arrayminus=down, visible=True),
            marker_pattern_shape="/" if name.startswith("random") else "",
        ))
    fig.update_layout(barmode="group", title=title, yaxis=dict(title="refusal rate",
                      range=[0, 1.15]), height=480, width=900, legend_title="arm")
    return fig


def addition_sweep_figure(rows: Sequence[dict[str, Any]], chosen: int | None = None,
                          baseline: float | None = None,
                          title: str = "Refusal induced by adding the direction, by layer"
                          ) -> go.Figure:
    """Refusal rate (95% CI) per layer with that layer's vector added, beside the random
    control; ``rows`` from :func:`refusal_lens.evaluation.addition_sweep`."""
    fig = go.Figure()
    layers = [r["layer"] for r in rows]
    for key, name, color in (("addition", "direction added", "#d62728"),
                             ("random_addition", "random direction added", "#7f7f7f")):
        rs = [r[key] for r in rows]
        fig.add_trace(go.Scatter(
            x=layers, y=[r["rate"] for r in rs], name=name, mode="lines+markers",
            line=dict(color=color, dash="dot" if key.startswith("random") else "solid"),
            error_y=dict(type="data", visible=True,
                         array=[r["ci_high"] - r["rate"] for r in rs],
                         arrayminus=[r["rate"] - r["ci_low"] for r in rs])))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dash", line_color="#1f77b4",
                      annotation_text=f"no intervention {baseline:.2f}",
                      annotation_position="bottom left")
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dash", line_color="black",
                      annotation_text=f"selected layer {chosen}")
    fig.update_layout(title=title, xaxis=dict(title="layer (vector added at resid_pre)",
                                              dtick=1),
                      yaxis=dict(title="refusal rate", range=[0, 1.05]), height=460, width=860)
    return fig


__all__ += ["addition_sweep_figure"]


# ---- adversarial-suffix analysis (cosine traces, DFA heads, attention shift) ---------------

__all__ += ["cosine_traces_figure", "dfa_heads_figure", "attention_shift_figure"]

_COND_COLORS = {"harmful": "#d62728", "harmful + adversarial suffix": "#9467bd",
                "harmful + random suffix": "#ff7f0e", "harmless": "#1f77b4"}


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[:2], 16)},{int(h[2:4], 16)},{int(h[4:], 16)},{alpha})"


def cosine_traces_figure(traces: Any, title: str = "Cosine with the refusal direction "
                         "(last token, mean ± SD)") -> go.Figure:
    """Fig. 5: per-layer cosine of the last token's residual with r-hat, one band per condition.

    ``traces``: a :class:`refusal_lens.traces.CosineTraces`.
    """
    fig = go.Figure()
    x = list(traces.site_labels)
    for i, (cond, mean, sd) in enumerate(zip(traces.conditions, traces.mean, traces.std)):
        color = _COND_COLORS.get(cond, f"hsl({(i * 67) % 360},60%,45%)")
        if color.startswith("#"):
            band = _rgba(color, 0.18)
        else:
            band = color.replace("hsl", "hsla").replace(")", ",0.18)")
        hi, lo = (mean + sd).tolist(), (mean - sd).tolist()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor=band,
                                 line=dict(width=0), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=mean.tolist(), name=cond, mode="lines+markers",
                                 line=dict(color=color), marker=dict(size=4)))
    if 0 <= traces.direction_layer < len(x):
        fig.add_vline(x=traces.direction_layer, line_dash="dot", line_color="grey",
                      annotation_text=f"direction layer {traces.direction_layer}")
    fig.update_layout(title=title, xaxis_title="residual stream site",
                      yaxis_title="cosine similarity", height=480, width=1000)
    return fig


def dfa_heads_figure(dfas: dict[str, Any], heads: Sequence[tuple[int, int]],
                     title: str = "Direct feature attribution of the top heads (mean ± SD)"
                     ) -> go.Figure:
    """Fig. 6a: each head's contribution to the projection on r-hat, grouped by condition.

    ``dfas``: condition -> :class:`refusal_lens.attribution.DFA`.
    """
    fig = go.Figure()
    labels = [f"L{l}H{h}" for l, h in heads]
    for i, (cond, dfa) in enumerate(dfas.items()):
        vals = dfa.head_values(heads)
        sd = vals.std(0) if len(vals) > 1 else vals[0] * 0
        fig.add_trace(go.Bar(name=cond, x=labels, y=vals.mean(0).tolist(),
                             error_y=dict(type="data", array=sd.tolist(), visible=True),
                             marker_color=_COND_COLORS.get(cond)))
    fig.update_layout(barmode="group", title=title, xaxis_title="head",
                      yaxis_title=f"projection on r-hat at layer {next(iter(dfas.values())).layer}",
                      height=480, width=1000)
    return fig


def attention_shift_figure(shift: Any, title: str = "Attention from the last token "
                           "(mean over prompts)") -> go.Figure:
    """Fig. 6b: attention mass on the instruction and suffix spans per head and condition.

    ``shift``: a :class:`refusal_lens.attention.AttentionShift`.
    """
    labels = [f"L{l}H{h}" for l, h in shift.heads]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("to the instruction", "to the suffix"),
                        shared_yaxes=True)
    for cond, spans in shift.mass.items():
        for col, span in ((1, "instruction"), (2, "suffix")):
            v = spans[span]
            fig.add_trace(go.Bar(name=cond, x=labels, y=v.mean(0).tolist(),
                                 error_y=dict(type="data", array=(v.std(0) if len(v) > 1 else
                                                                  v[0] * 0).tolist()),
                                 marker_color=_COND_COLORS.get(cond), showlegend=col == 1,
                                 legendgroup=cond), row=1, col=col)
    fig.update_layout(barmode="group", title=title, yaxis_title="attention mass", height=480,
                      width=1100)
    return fig


# ---- strength sweeps, subspaces and per-category directions -------------------------------

__all__ += ["strength_sweep_figure"]

_SEED_DASH = ("solid", "dash", "dashdot", "longdash")


def strength_sweep_figure(results: Sequence[dict[str, Any]],
                          title: str = "Strength sweeps") -> go.Figure:
    """Refusal rate (95% CI) and CE against the ablation strength (harmful prompts) and the
    addition coefficient (harmless prompts), direction beside its random control, one line
    per seed; ``results`` from :func:`refusal_lens.sweeps.strength_sweep`. Strength 0 is the
    unintervened model."""
    fig = make_subplots(rows=2, cols=2, shared_xaxes="columns", vertical_spacing=0.08,
                        subplot_titles=("ablation strength alpha: harmful refusal",
                                        "addition coefficient: harmless refusal",
                                        "ablation: CE of harmless reference answers",
                                        "addition: CE of harmless reference answers"))
    for i, res in enumerate(results):
        dash = _SEED_DASH[i % len(_SEED_DASH)]
        base = res["baseline"]
        for col, kind, split in ((1, "ablation", "harmful"), (2, "addition", "harmless")):
            rows = res[kind]
            xs = [0.0] + [r["strength"] for r in rows]
            for name, color in (("direction", "#d62728"), ("random", "#7f7f7f")):
                rs = [base[split]] + [r[name]["refusal"] for r in rows]
                label = f"{name}, seed {res['seed']}"
                fig.add_trace(go.Scatter(
                    x=xs, y=[r["rate"] for r in rs], mode="lines+markers", name=label,
                    legendgroup=label, showlegend=col == 1,
                    line=dict(color=color, dash=dash),
                    error_y=dict(type="data", visible=True,
                                 array=[r["ci_high"] - r["rate"] for r in rs],
                                 arrayminus=[r["rate"] - r["ci_low"] for r in rs])),
                    row=1, col=col)
                fig.add_trace(go.Scatter(
                    x=xs, y=[base["ce"]] + [r[name]["ce"] for r in rows], mode="lines+markers",
                    name=label, legendgroup=label, showlegend=False,
                    line=dict(color=color, dash=dash)), row=2, col=col)
    fig.update_yaxes(title_text="refusal rate", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_yaxes(title_text="CE (nats/token)", row=2, col=1)
    fig.update_xaxes(title_text="alpha (fraction of the component removed)", row=2, col=1)
    fig.update_xaxes(title_text="coefficient c (x + c r at the direction's layer)", row=2, col=2)
    fig.update_layout(title=title, height=720, width=1100, legend_title="arm")
    return fig


__all__ += ["selection_rules_figure"]


def selection_rules_figure(rules: dict[str, dict[str, Any]],
                           title: str = "Selection rules on held-out prompts") -> go.Figure:
    """Per selection rule, pooled refusal rates (95% CI): ablation on harmful prompts and
    addition on harmless prompts, each beside its random control and the baseline.

    ``rules``: rule name -> ``{"rates": {arm key -> rate summary}}`` (as from
    :func:`refusal_lens.evaluation.summarize`)."""
    arms = [("baseline_harmful", "harmful: baseline"), ("ablation", "harmful: ablation"),
            ("random_ablation", "harmful: random ablation"),
            ("baseline_harmless", "harmless: baseline"), ("addition", "harmless: addition"),
            ("random_addition", "harmless: random addition")]
    fig = go.Figure()
    for i, (rule, res) in enumerate(rules.items()):
        rates = res["rates"]
        present = [(k, label) for k, label in arms if k in rates]
        ys = [rates[k]["rate"] for k, _ in present]
        fig.add_trace(go.Bar(
            name=f"rule '{rule}'", x=[label for _, label in present], y=ys,
            text=[f"{y:.2f}" for y in ys], textposition="outside",
            marker_color=("#1f77b4", "#d62728", "#2ca02c")[i % 3],
            error_y=dict(type="data", visible=True,
                         array=[rates[k]["ci_high"] - rates[k]["rate"] for k, _ in present],
                         arrayminus=[rates[k]["rate"] - rates[k]["ci_low"] for k, _ in present])))
    fig.add_hline(y=0.8, line_dash="dot", line_color="grey",
                  annotation_text="addition bar 0.80", annotation_position="top left")
    fig.add_hline(y=0.1, line_dash="dot", line_color="grey",
                  annotation_text="ablation bar 0.10", annotation_position="bottom left")
    fig.update_layout(barmode="group", title=title, height=500, width=1000,
                      yaxis=dict(title="refusal rate", range=[0, 1.15]), legend_title="rule")
    return fig


__all__ += ["subspace_figure"]


def subspace_figure(results: Sequence[dict[str, Any]],
                    title: str = "Ablating a k-dimensional refusal subspace") -> go.Figure:
    """Harmful refusal (95% CI) and harmless CE against the subspace dimension ``k``, beside
    random ``k``-dim subspaces, one line per seed; ``results`` from
    :func:`refusal_lens.subspace.subspace_sweep`. ``k = 0`` is the unintervened model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("harmful refusal",
                                                        "CE of harmless reference answers"))
    for i, res in enumerate(results):
        dash = _SEED_DASH[i % len(_SEED_DASH)]
        ks = [0] + [r["k"] for r in res["rows"]]
        for name, color in (("subspace", "#d62728"), ("random", "#7f7f7f")):
            rs = [res["baseline"]["harmful"]] + [r[name]["refusal"] for r in res["rows"]]
            label = f"{name}, seed {res['seed']}"
            fig.add_trace(go.Scatter(
                x=ks, y=[r["rate"] for r in rs], mode="lines+markers", name=label,
                legendgroup=label, line=dict(color=color, dash=dash),
                error_y=dict(type="data", visible=True,
                             array=[r["ci_high"] - r["rate"] for r in rs],
                             arrayminus=[r["rate"] - r["ci_low"] for r in rs])), row=1, col=1)
            fig.add_trace(go.Scatter(
                x=ks, y=[res["baseline"]["ce"]] + [r[name]["ce"] for r in res["rows"]],
                mode="lines+markers", name=label, legendgroup=label, showlegend=False,
                line=dict(color=color, dash=dash)), row=1, col=2)
    fig.update_xaxes(title_text="subspace dimension k", dtick=1)
    fig.update_yaxes(title_text="refusal rate", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="CE (nats/token)", row=1, col=2)
    fig.update_layout(title=title, height=460, width=1100, legend_title="ablated")
    return fig


__all__ += ["categories_figure"]


def categories_figure(names: Sequence[str], cosines: Sequence[Sequence[float]],
                      rates: dict[str, dict[str, dict[str, float]]] | None = None,
                      title: str = "Per-category refusal directions") -> go.Figure:
    """Left: cosine matrix of the per-category directions and the global one (last row /
    column). Right (with ``rates``: arm -> category -> rate summary): refusal per category
    under each arm, with 95% CIs."""
    cols = 2 if rates else 1
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.5, 0.5][:cols],
                        subplot_titles=("cosine similarity",
                                        "refusal by test category")[:cols])
    fig.add_trace(go.Heatmap(z=[list(r) for r in cosines], x=list(names), y=list(names),
                             zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                             text=[[f"{v:.2f}" for v in r] for r in cosines],
                             texttemplate="%{text}", colorbar=dict(x=0.45 if rates else 1.0)),
                  row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    if rates:
        colors = {"baseline": "#1f77b4", "ablation": "#d62728", "random_ablation": "#7f7f7f"}
        for arm, by_cat in rates.items():
            cats = list(by_cat)
            fig.add_trace(go.Bar(
                name=arm.replace("_", " "), y=cats, x=[by_cat[c]["rate"] for c in cats],
                orientation="h", marker_color=colors.get(arm),
                error_x=dict(type="data", visible=True,
                             array=[by_cat[c]["ci_high"] - by_cat[c]["rate"] for c in cats],
                             arrayminus=[by_cat[c]["rate"] - by_cat[c]["ci_low"] for c in cats])),
                row=1, col=2)
        fig.update_xaxes(title_text="refusal rate", range=[0, 1.05], row=1, col=2)
        fig.update_layout(barmode="group")
    fig.update_layout(title=title, height=620, width=1300 if rates else 720)
    return fig


__all__ += ["pareto_figure"]


def pareto_figure(results: Sequence[dict[str, Any]],
                  title: str = "Optimised ablation: refusal vs KL") -> go.Figure:
    """Validation refusal against KL of every search trial, the Pareto front, the uniform
    (single-direction) trial, the chosen point and the random direction, one panel per seed;
    ``results`` from :func:`refusal_lens.optimized_ablation.search_weights`."""
    fig = make_subplots(rows=1, cols=len(results), shared_yaxes=True,
                        subplot_titles=[f"seed {r['seed']}" for r in results])
    for col, res in enumerate(results, start=1):
        trials = res["trials"]
        front = sorted((t for t in trials if t["number"] in set(res["pareto"])),
                       key=lambda t: t["kl"])
        show = col == 1
        fig.add_trace(go.Scatter(x=[t["kl"] for t in trials], y=[t["refusal"] for t in trials],
                                 mode="markers", marker=dict(color="#bbbbbb", size=6),
                                 name="trial", showlegend=show, legendgroup="trial",
                                 text=[f"trial {t['number']}" for t in trials]), row=1, col=col)
        fig.add_trace(go.Scatter(x=[t["kl"] for t in front], y=[t["refusal"] for t in front],
                                 mode="lines+markers", line=dict(color="#1f77b4"),
                                 name="Pareto front", showlegend=show, legendgroup="front"),
                      row=1, col=col)
        marks = [("uniform", "single-direction ablation", "star", "#d62728"),
                 ("chosen", "chosen point", "diamond", "#2ca02c"),
                 ("random", "random direction ablated", "x", "#7f7f7f")]
        for key, name, symbol, color in marks:
            if key in res:
                fig.add_trace(go.Scatter(x=[res[key]["kl"]], y=[res[key]["refusal"]],
                                         mode="markers", name=name, showlegend=show,
                                         legendgroup=key, marker=dict(symbol=symbol, size=14,
                                                                      color=color)),
                              row=1, col=col)
        fig.update_xaxes(title_text="KL, harmless validation prompts", type="log", row=1, col=col)
    fig.update_yaxes(title_text="refusal rate, harmful validation prompts", range=[-0.02, 1.02],
                     row=1, col=1)
    fig.update_layout(title=title, height=480, width=560 * len(results) + 200)
    return fig
