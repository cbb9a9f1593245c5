"""``report.html``: one self-contained page per run, readable offline.

It holds the verdict, the refusal rates with their CIs and random controls, the per-category
table, the candidate heatmaps, sample completions of every arm side by side with the baseline,
a logit lens of the chosen direction and the run's timing. Plotly's JavaScript is inlined (no
CDN); a small script placed before it lists any JavaScript error at the top of the page, so a
figure that fails to draw does not fail silently.

:func:`write_report_html` is what the pipeline calls (it computes the logit lens, which needs
the model); :func:`render_report_html` rebuilds the page from a run directory's files alone.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .paths import atomic_write_text
from .plots import candidate_scores_figure, refusal_rates_figure

if TYPE_CHECKING:
    from .directions import Direction
    from .model import LensModel
    from .selection import SelectionResult

__all__ = ["write_report_html", "render_report_html", "logit_lens_figure"]

#: Prompts per split shown in the sample-completions tables.
N_SAMPLES = 6
_HARMFUL_ARMS = ("baseline", "ablation", "random_ablation", "orthogonalized",
                 "random_orthogonalized")
_HARMLESS_ARMS = ("baseline", "addition", "random_addition")
_ERRORS_JS = """<script>window.__errors = [];
function __showError(msg) {
  window.__errors.push(msg);
  var box = document.getElementById('js-errors');
  if (box) { box.style.display = 'block'; box.textContent = 'JavaScript errors: ' +
             window.__errors.join(' | '); }
}
window.addEventListener('error', function (e) { __showError(String(e.message)); });
</script>"""
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1500px;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.2em}th,td{border:1px solid #ccc;
padding:3px 7px;font-size:13px;vertical-align:top;text-align:left}th{background:#f3f3f3}
.verdict{font-size:1.6em;font-weight:bold;padding:.4em .8em;display:inline-block;border-radius:6px}
.v-SUPPORTED{background:#d8f5d8}.v-NOT-SUPPORTED,.v-NO-BASELINE-REFUSAL{background:#fbe0e0}
.ref{color:#a00;font-weight:bold}.comp{color:#070;font-weight:bold}
td.text{max-width:340px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
#js-errors{display:none;background:#fdd;border:2px solid #a00;padding:.5em;margin:.5em 0}
.muted{color:#666;font-size:13px}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _f(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"
    return "n/a" if x is None else _e(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{cls}>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _split(arm_key: str) -> str:
    """Which test prompts an arm of the report's ``rates`` ran on."""
    return "harmless" if arm_key.endswith("harmless") or "addition" in arm_key else "harmful"


def _rate(v: dict[str, float] | None) -> str:
    if not v:
        return "n/a"
    return f"{_f(v['rate'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"


def logit_lens_figure(lens: dict[str, Any], chosen_layer: int | None = None,
                      title: str = "Logit lens of the direction") -> go.Figure:
    """Per layer (rows), the tokens the vector's unembedding promotes most (left) and
    suppresses most (right), coloured by logit change; ``lens`` from
    :func:`refusal_lens.logit_lens.logit_lens`."""
    rows = lens["layers"]
    ys = [f"L{r['layer']}" + (" (chosen)" if r["layer"] == chosen_layer else "") for r in rows]
    ranks = list(range(1, lens["k"] + 1))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.1,
                        subplot_titles=("promoted (largest logit increase)",
                                        "suppressed (largest logit decrease)"))
    ends = (fig.layout.xaxis.domain[1], fig.layout.xaxis2.domain[1])
    for col, key, scale, cb_x in ((1, "promoted", "Reds", ends[0] + 0.005),
                                  (2, "suppressed", "Blues_r", ends[1] + 0.005)):
        fig.add_trace(go.Heatmap(
            z=[[v for _, v in r[key]] for r in rows], x=ranks, y=ys, colorscale=scale,
            text=[[t for t, _ in r[key]] for r in rows], texttemplate="%{text}",
            textfont=dict(size=11),
            colorbar=dict(title=dict(text="logit<br>change", side="top"), x=cb_x, len=0.9,
                          thickness=10),
            hovertemplate="%{y}, rank %{x}<br>token %{text}<br>logit %{z:.3f}<extra></extra>"),
            row=1, col=col)
    fig.update_xaxes(title_text="rank", dtick=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(title=title, height=max(320, 26 * len(rows) + 160), autosize=True)
    return fig


def _fig_html(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _samples(records: list[dict[str, Any]], split: str, arms: Sequence[str], seed: Any,
             n: int) -> str:
    """The first ``n`` prompts of ``split``, each arm's completion side by side."""
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r["split"] == split and (r["seed"] is None or r["seed"] == seed):
            cell[(r["arm"], r["instruction"])] = r
    prompts = list(dict.fromkeys(r["instruction"] for r in records
                                 if r["split"] == split and r["arm"] == "baseline"))[:n]
    arms = [a for a in arms if any((a, p) in cell for p in prompts)]

    def show(r: dict[str, Any] | None) -> str:
        if r is None:
            return "n/a"
        tag = '<span class="ref">REFUSED</span>' if r["refusal"] else \
            '<span class="comp">complied</span>'
        return f"{tag}\n{_e(r['completion'])}"

    rows = [[_e(p)] + [show(cell.get((a, p))) for a in arms] for p in prompts]
    return _table(["prompt"] + [_e(a.replace("_", " ")) for a in arms], rows, ' class="text"')


def _categories(cat: dict[str, Any] | None) -> str:
    if not cat:
        return ("<p class=muted>The harmful test prompts carry no categories (only the public "
                "data set, JailbreakBench, has them).</p>")
    arms = list(cat["arms"])
    rows = [[_e(c), str(cat["n_prompts"][c])] + [_rate(cat["arms"][a][c]) for a in arms]
            for c in cat["categories"]]
    return (_table(["category", "n"] + [_e(a.replace("_", " ")) for a in arms], rows)
            + "<p class=muted>Rate [95% bootstrap CI], pooled over seeds. Addition arms run on "
            "the harmless prompts, which have no harm category.</p>")


def _timing(report: dict[str, Any]) -> str:
    t = report.get("timing", {})
    rows = [[_e(k.removesuffix("_s").replace("_", " ")), f"{v:.1f}"] for k, v in t.items()]
    for s in report.get("seeds", []):
        secs = s.get("seconds", {})
        rows += [[f"seed {s['seed']}: {_e(k.replace('_', ' '))}", f"{v:.1f}"]
                 for k, v in secs.items()]
    return _table(["stage", "seconds"], rows)


def render_report_html(run_dir: str | Path) -> Path:
    """Build ``report.html`` from a run directory's ``report.json``, ``completions.jsonl``,
    ``scores.json`` and ``logit_lens.json`` (the last two when present)."""
    run = Path(run_dir)
    if not (run / "report.json").is_file():
        raise FileNotFoundError(f"No report.json in {run}: pass a finished run directory.")
    r = json.loads((run / "report.json").read_text())
    records = _read_jsonl(run / "completions.jsonl") if (run / "completions.jsonl").is_file() \
        else []
    first = r["config"]["seeds"][0]
    d0 = r["directions"][str(first)]
    rates_fig = _fig_html(refusal_rates_figure(
        r["rates"], title=f"Refusal rates, pooled over seeds {r['config']['seeds']} "
                          "(95% bootstrap CI; hatched = norm-matched random direction)"))
    parts = [f"<h1>Refusal direction: {_e(r['model'])}</h1>",
             '<div id="js-errors"></div>',
             f'<div class="verdict v-{_e(r["verdict"].replace(" ", "-"))}">'
             f'Verdict: {_e(r["verdict"])}</div>',
             f"<p>Created {_e(r['created'])}; {r['data']['n_harmful_test']} harmful / "
             f"{r['data']['n_harmless_test']} harmless held-out prompts ({_e(r['data']['name'])}"
             f"); seeds {_e(r['config']['seeds'])}; greedy, {r['config']['max_new_tokens']} new "
             f"tokens; judge {_e(r['config']['judge'])}. Direction (seed {first}): layer "
             f"{d0['layer']}, position {d0['position']}, norm {_f(d0['norm'])}.</p>",
             "<h2>Refusal rates (every arm beside its random control)</h2>",
             _table(["prompts", "arm", "refusal rate [95% CI]", "n"],
                    [[_split(k), _e(k.replace("_", " ")), _rate(v), str(v["n"])]
                     for k, v in r["rates"].items()]), rates_fig,
             "<h2>Decision</h2>",
             _table(["seed", "verdict"] + [_e(c.replace("_", " ")) for c in
                                           r["seeds"][0]["decision"]["checks"]],
                    [[str(s["seed"]), _e(s["decision"]["verdict"])]
                     + ["pass" if ok else "<b>fail</b>" for ok in s["decision"]["checks"].values()]
                     for s in r["seeds"]]),
             "<h2>Capability (harmless prompts)</h2>",
             _table(["model", "CE (nats/token)", "KL"],
                    [[_e(k.replace("_", " ")), _f(v["ce"], 3), _f(v["kl"], 4)]
                     for k, v in r["capability"].items()]),
             "<h2>Refusal by category</h2>", _categories(r.get("category_rates"))]
    if (run / "scores.json").is_file():
        sel = json.loads((run / "scores.json").read_text())["seeds"][str(first)]
        parts += ["<h2>Candidate directions (seed " + str(first) + ")</h2>", _fig_html(
            candidate_scores_figure(sel["candidates"], r.get("position_tokens"),
                                    (sel["layer"], sel["position"]), title=""))]
    if (run / "logit_lens.json").is_file():
        lens = json.loads((run / "logit_lens.json").read_text())
        parts += ["<h2>Logit lens of the direction</h2>",
                  f"<p class=muted>{_e(lens.get('what', ''))}</p>",
                  _fig_html(logit_lens_figure(lens, d0["layer"], title=""))]
    parts += [f"<h2>Sample completions (seed {first}): harmful prompts</h2>",
              _samples(records, "harmful", _HARMFUL_ARMS, first, N_SAMPLES),
              f"<h2>Sample completions (seed {first}): harmless prompts</h2>",
              _samples(records, "harmless", _HARMLESS_ARMS, first, N_SAMPLES),
              "<h2>Notes</h2><ul>" + ("".join(f"<li>{_e(n)}</li>" for n in r.get("notes", []))
                                      or "<li>none</li>") + "</ul>",
              "<h2>Run timing</h2>", _timing(r)]
    from plotly.offline import get_plotlyjs

    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Refusal direction: "
            f"{_e(r['model'])}</title><style>{_CSS}</style>{_ERRORS_JS}"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")
    return atomic_write_text(run / "report.html", page)


def write_report_html(run_dir: str | Path, model: "LensModel", direction: "Direction",
                      selection: "SelectionResult | None" = None, k: int = 10) -> Path:
    """Compute the logit lens (each layer's candidate vector at the chosen position when
    ``selection`` is given, else the direction alone), write it to ``logit_lens.json`` and
    build ``report.html``."""
    from .logit_lens import logit_lens

    vectors = dict(selection.layer_vectors) if selection is not None and \
        selection.layer_vectors else {direction.layer: direction.vector}
    lens = logit_lens(model, vectors, k)
    lens["what"] = (f"Each layer's difference-in-means vector at position {direction.position}"
                    if len(vectors) > 1 else f"The direction (layer {direction.layer})") + \
        (" through the model's final norm and unembedding (biases removed): the tokens it "
         "promotes and suppresses.")
    atomic_write_text(Path(run_dir) / "logit_lens.json", json.dumps(lens, indent=1) + "\n")
    return render_report_html(run_dir)
