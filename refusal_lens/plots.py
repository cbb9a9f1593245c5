"""Plotly figures for reports. Every figure is saved with :func:`save_figure`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure_files import save_figure, static_export_problem

__all__ = ["save_figure", "static_export_problem", "candidate_scores_figure",
           "refusal_rates_figure", "suffix_effect_figure"]


def _position_label(position: int, tokens: Sequence[str] | None, positions: Sequence[int]
                    ) -> str:
    """``"-2 'assistant'"``: the offset and its template token (when the tokens are known;
    ``tokens`` are the post-instruction tokens, last = offset -1)."""
    if tokens and len(tokens) >= -position > 0:
        return f"{position} {tokens[len(tokens) + position]!r}"
    return str(position)


def candidate_scores_figure(
    candidates: Sequence[dict[str, Any]], position_labels: Sequence[str] | None = None,
    chosen: tuple[int, int] | None = None, title: str = "Candidate directions",
) -> go.Figure:
    """Every candidate's screen bypass (heatmap, layer x post-instruction position), and the
    fully scored ones' validation bypass, induce and KL (bars; the chosen one in gold).

    ``candidates``: rows with ``layer``, ``position``, ``screen_bypass``, ``bypass``,
    ``induce``, ``kl``, ``scored`` (as in ``SelectionResult.table()``); blank heatmap cells
    were not screened. ``position_labels``: the post-instruction template tokens (last = offset
    -1), shown on the position axis.
    """
    layers = sorted({r["layer"] for r in candidates})
    positions = sorted({r["position"] for r in candidates})
    labels = [_position_label(p, position_labels, positions) for p in positions]
    scored = sorted((r for r in candidates if r.get("scored")),
                    key=lambda r: (r["layer"], r["position"]))
    names = [f"L{r['layer']} {_position_label(r['position'], position_labels, positions)}"
             for r in scored]
    is_chosen = [chosen is not None and (r["layer"], r["position"]) == tuple(chosen)
                 for r in scored]
    bars = [("bypass", "bypass (val) ↓"), ("induce", "induce (val) ↑"), ("kl", "KL (val) ↓")]
    fig = make_subplots(rows=1, cols=1 + len(bars) if scored else 1,
                        subplot_titles=["screen bypass, every candidate (lower = removes more "
                                        "refusal)"] + ([b[1] for b in bars] if scored else []))
    # heatmap, its colour bar, room for the bars' candidate labels, three bar panels
    domains = [(0.0, 0.40), (0.56, 0.69), (0.72, 0.85), (0.88, 1.0)] if scored else [(0, 0.9)]
    for i, dom in enumerate(domains, start=1):
        fig.update_xaxes(domain=list(dom), row=1, col=i)
        fig.layout.annotations[i - 1].x = sum(dom) / 2  # keep each subplot title centred
    grid = [[None] * len(positions) for _ in layers]
    for r in candidates:
        v = r.get("screen_bypass")
        if isinstance(v, (int, float)) and math.isfinite(v):
            grid[layers.index(r["layer"])][positions.index(r["position"])] = v
    x_end = fig.layout.xaxis.domain[1]
    fig.add_trace(go.Heatmap(
        z=grid, x=labels, y=layers, colorscale="RdBu_r", zmid=0, name="screen bypass",
        colorbar=dict(title=dict(text="screen<br>bypass", side="top"), x=x_end + 0.005,
                      len=0.85, thickness=10),
        hovertemplate="layer %{y}<br>position %{x}<br>screen bypass %{z:.3f}<extra></extra>"),
        row=1, col=1)
    if scored:
        fig.add_trace(go.Scatter(
            x=[labels[positions.index(r["position"])] for r in scored],
            y=[r["layer"] for r in scored], mode="markers", name="fully scored",
            marker=dict(symbol="circle-open", size=13, color="black", line=dict(width=2))),
            row=1, col=1)
    if chosen is not None and chosen[1] in positions:
        fig.add_trace(go.Scatter(
            x=[labels[positions.index(chosen[1])]], y=[chosen[0]], mode="markers", name="chosen",
            marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1))),
            row=1, col=1)
    for i, (key, name) in enumerate(bars if scored else [], start=2):
        vals = [r.get(key) if isinstance(r.get(key), (int, float)) else None for r in scored]
        fig.add_trace(go.Bar(
            x=vals, y=names, orientation="h", showlegend=False, name=name,
            marker=dict(color=["gold" if c else "#7f9fbf" for c in is_chosen],
                        line=dict(color="black", width=[1.5 if c else 0 for c in is_chosen])),
            text=[f"{v:.3g}" if v is not None else "n/a" for v in vals], textposition="auto",
            textangle=0, cliponaxis=False,
            hovertemplate="%{y}<br>" + name + " %{x:.4f}<extra></extra>"), row=1, col=i)
        fig.update_yaxes(showticklabels=i == 2, autorange="reversed", row=1, col=i)
    fig.update_yaxes(title_text="layer", dtick=1, range=[layers[0] - 0.5, layers[-1] + 0.5],
                     row=1, col=1)
    fig.update_xaxes(title_text="post-instruction position (offset, token)", tickangle=30,
                     row=1, col=1)
    fig.update_layout(title=title, height=max(440, 22 * len(layers) + 240), autosize=True,
                      legend=dict(orientation="h", yanchor="bottom", y=1.09, xanchor="right",
                                  x=1),
                      uniformtext=dict(minsize=10, mode="show"),
                      margin=dict(l=60, r=30, t=110, b=110))
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
    for i, (name, (xs, ys, up, down)) in enumerate(series.items()):
        rand = name.startswith("random")
        fig.add_trace(go.Bar(
            name=name, x=xs, y=ys, offsetgroup=str(i), legendgroup=name,
            error_y=dict(type="data", array=up, arrayminus=down, visible=True),
            marker=dict(color=_RANDOM_GREY if rand else _ARM_COLORS.get(name),
                        pattern_shape="/" if rand else ""),
            hovertemplate="%{x}, " + name + ": %{y:.2f}<extra></extra>"))
        # the value above the top of its CI, so the two never overlap
        fig.add_trace(go.Scatter(
            x=xs, y=[y + u for y, u in zip(ys, up)], text=[f"{y:.2f}" for y in ys],
            mode="text", textposition="top center", offsetgroup=str(i), legendgroup=name,
            showlegend=False, hoverinfo="skip", textfont=dict(size=11)))
    fig.update_layout(barmode="group", scattermode="group", title=title,
                      yaxis=dict(title="refusal rate", range=[0, 1.15]), height=480, width=900,
                      legend_title="arm (grey hatched: norm-matched random direction)")
    return fig


_RANDOM_GREY = "#9e9e9e"
_ARM_COLORS = {"baseline": "#1f77b4", "ablation": "#d62728", "orthogonalized": "#9467bd",
               "addition": "#2ca02c"}


def _count_ci(rate: float, n: int) -> tuple[float, float]:
    """95% percentile-bootstrap CI of a refusal rate known as a count: ``rate * n`` of ``n``
    (the bootstrap of 0/1 flags depends only on how many are 1)."""
    from .evaluation import bootstrap_ci

    k = round(rate * n)
    return bootstrap_ci([1.0] * k + [0.0] * (n - k))


def suffix_effect_figure(effect: dict[str, Any], title: str = "Refusal with an adversarial "
                         "suffix (95% bootstrap CI)") -> go.Figure:
    """Refusal without a suffix, with the adversarial suffix and with each random suffix of
    the same length (the controls: grey, hatched), with 95% bootstrap CIs over prompts.

    ``effect``: as from :func:`refusal_lens.suffixes.measure_effect` (``n_prompts``,
    ``refusal_no_suffix``, ``refusal_adversarial``, ``refusal_random``; ``random_seeds``
    labels the controls when present).
    """
    n = int(effect["n_prompts"])
    seeds = effect.get("random_seeds") or list(range(len(effect["refusal_random"])))
    groups = [("no suffix", ["no suffix"], [effect["refusal_no_suffix"]], "#1f77b4", ""),
              ("adversarial suffix", ["adversarial suffix"], [effect["refusal_adversarial"]],
               _COND_COLORS["harmful + adversarial suffix"], ""),
              ("random suffixes (controls)", [f"random suffix, seed {s}" for s in seeds],
               list(effect["refusal_random"]), "#9e9e9e", "/")]
    fig = go.Figure()
    for name, xs, ys, color, hatch in groups:
        cis = [_count_ci(y, n) for y in ys]
        # the rate and its CI under each bar (labels on the bars would collide with the CIs)
        labels = [f"{x}<br><b>{y:.2f}</b> [{lo:.2f}, {hi:.2f}]"
                  for x, y, (lo, hi) in zip(xs, ys, cis)]
        fig.add_trace(go.Bar(
            name=name, x=labels, y=ys, marker=dict(color=color, pattern_shape=hatch),
            error_y=dict(type="data", array=[hi - y for y, (_, hi) in zip(ys, cis)],
                         arrayminus=[y - lo for y, (lo, _) in zip(ys, cis)], visible=True,
                         thickness=2, width=8),
            hovertemplate="%{x}<extra></extra>"))
    fig.update_layout(title=title, yaxis=dict(title=f"refusal rate ({n} prompts)",
                                              range=[0, 1.05]),
                      legend=dict(orientation="h", y=-0.25), height=480, width=900,
                      margin=dict(b=120))
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


__all__ += ["direction_comparison_figure"]


def direction_comparison_figure(panels: dict[str, dict[str, Any]],
                                title: str = "Is the refusal direction stable?") -> go.Figure:
    """One panel per comparison: layer-by-layer cosines (one line per series), a grey band
    for chance (``|cos|`` of random directions, 99th percentile) and, where given, marked
    points for the chosen directions.

    ``panels``: title -> ``{"series": {name: [cos per layer]}, "chance": float,
    "points": {name: (layer, cos)}}``.
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels),
                        horizontal_spacing=0.08)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for col, panel in enumerate(panels.values(), 1):
        n = max(len(v) for v in panel["series"].values())
        fig.add_trace(go.Scatter(x=[0, n - 1, n - 1, 0], y=[-panel["chance"], -panel["chance"],
                                 panel["chance"], panel["chance"]], fill="toself",
                                 fillcolor="rgba(128,128,128,0.25)", line_width=0,
                                 name="chance (random directions, 99%)", showlegend=col == 1,
                                 hoverinfo="skip"), 1, col)
        for i, (name, ys) in enumerate(panel["series"].items()):
            fig.add_trace(go.Scatter(x=list(range(len(ys))), y=ys, mode="lines+markers",
                                     name=name, line_color=palette[i % len(palette)],
                                     hovertemplate="layer %{x}: cos %{y:.3f}"), 1, col)
        for name, (layer, cos) in panel.get("points", {}).items():
            fig.add_trace(go.Scatter(x=[layer], y=[cos], mode="markers+text", text=[name],
                                     textposition="top center", name=name,
                                     marker=dict(symbol="star", size=13, color="gold",
                                                 line=dict(color="black", width=1))), 1, col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text="cosine", range=[-0.2, 1.05])
    fig.update_layout(title=title, template="plotly_white", autosize=True, height=430,
                      legend=dict(orientation="h", y=-0.22))
    return fig
