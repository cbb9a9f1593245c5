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
    """Write ``<stem>.html`` (self-contained) always, and ``<stem>.png`` when static export works.

    PNG export needs kaleido (and a browser it can drive); without it the PNG is skipped with a
    one-line message on stderr. Returns the written paths.
    """
    global _STATIC_OK
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".html", ".png") else stem
    out = [atomic_write_text(stem.with_suffix(".html"),
                             fig.to_html(include_plotlyjs=True, full_html=True))]
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
