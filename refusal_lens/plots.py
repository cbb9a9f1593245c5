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
              ("random suffixes (controls)", [f"random suffix<br>seed {s}" for s in seeds],
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
                      xaxis=dict(tickangle=0), legend=dict(orientation="h", y=-0.3),
                      height=500, width=900, margin=dict(b=140))
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
