"""Plotly figures of the work beyond the paper: strength sweeps, selection rules, subspace
ablation, per-category directions, optimised ablation and the direction's stability. Saved with
:func:`refusal_lens.figure_files.save_figure`, like the report's figures (:mod:`refusal_lens.plots`).
"""

from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__: list[str] = []

__all__ += ["strength_sweep_figure"]

_SEED_DASH = ("solid", "dash", "dashdot", "longdash")


def _title_margin(title: str) -> int:
    """A top margin in px that fits every line of ``title``: plotly's default 100 px holds a
    title and one subtitle line; each further ``<br>`` needs 40 px more, or it runs into the
    subplots. Figures add it to their plot height, so a longer title does not shrink the plots."""
    return 100 + 40 * max(0, title.count("<br>") - 1)


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
    top = _title_margin(title)
    fig.update_layout(title=title, height=620 + top, width=1100, legend_title="arm",
                      margin={"t": top})
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
    top = _title_margin(title)
    fig.update_layout(title=title, height=360 + top, width=1100, legend_title="ablated",
                      margin={"t": top})
    return fig


__all__ += ["categories_figure"]


def categories_figure(names: Sequence[str], cosines: Sequence[Sequence[float]],
                      rates: dict[str, dict[str, dict[str, float]]] | None = None,
                      title: str = "Per-category refusal directions") -> go.Figure:
    """Left: cosine matrix of the per-category directions and the global one (last row /
    column). Right (with ``rates``: arm -> category -> rate summary): refusal per category
    under each arm, with 95% CIs."""
    cols = 2 if rates else 1
    gap = 0.24  # between the panels: the heatmap's colour bar, then the category labels
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.5, 0.5][:cols],
                        horizontal_spacing=gap if rates else None,
                        subplot_titles=("cosine similarity",
                                        "refusal by test category")[:cols])
    bar_x = (1 - gap) / 2 + 0.01 if rates else 1.0
    fig.add_trace(go.Heatmap(z=[list(r) for r in cosines], x=list(names), y=list(names),
                             zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                             text=[[f"{v:.2f}" for v in r] for r in cosines],
                             texttemplate="%{text}", colorbar=dict(x=bar_x, thickness=15)),
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
                        subplot_titles=[f"seed {r['seed']}: {r['n_trials']} trials"
                                        for r in results])
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
        # the chosen point under the star, larger: where the rule returns the uniform
        # kernel itself, both marks stay visible
        marks = [("chosen", "chosen point", "diamond", "#2ca02c", 20),
                 ("uniform", "single-direction ablation", "star", "#d62728", 12),
                 ("random", "random direction ablated", "x", "#7f7f7f", 14)]
        for key, name, symbol, color, size in marks:
            if key in res:
                fig.add_trace(go.Scatter(x=[res[key]["kl"]], y=[res[key]["refusal"]],
                                         mode="markers", name=name, showlegend=show,
                                         legendgroup=key, marker=dict(symbol=symbol, size=size,
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
