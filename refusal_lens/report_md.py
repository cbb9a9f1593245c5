"""The run report as Markdown (``report.md``): verdict, rates, capability, selection, notes.

:func:`render_markdown` turns the ``report.json`` dictionary that
:func:`refusal_lens.pipeline.run_pipeline` writes into the human-readable summary; a missed
target bar gets a data-based reason (:func:`_why`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def induce_ranking(candidates: Sequence[dict[str, Any]], layer: int, position: int
                   ) -> dict[str, Any]:
    """Where the chosen candidate's induce score ranks among every fully scored candidate
    (1 = induces refusal most), and the best of them: selection minimises bypass only."""
    scored = [c for c in candidates if c.get("scored") and isinstance(c.get("induce"), float)
              and math.isfinite(c["induce"])]
    chosen = next((c for c in scored if (c["layer"], c["position"]) == (layer, position)), None)
    if chosen is None:
        return {}
    best = max(scored, key=lambda c: c["induce"])
    return {"rank": 1 + sum(c["induce"] > chosen["induce"] for c in scored), "of": len(scored),
            "best": {k: best[k] for k in ("layer", "position", "induce", "bypass")}}


def _f(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"
    return "n/a" if x is None else str(x)


def render_markdown(r: dict[str, Any]) -> str:
    """The human-readable summary: verdict, rates table, capability, selection, notes."""
    from .categories import category_markdown
    from .evaluation import CI_LABEL, CI_METHOD, DECISION_RULE

    lines = [f"# Refusal direction: {r['model']}", "",
             f"**Verdict: {r['verdict']}**  ", f"Created {r['created']}; "
             f"{r['data']['n_harmful_test']} harmful / {r['data']['n_harmless_test']} harmless "
             f"held-out prompts ({r['data']['name']}); seeds {r['config']['seeds']}; "
             f"greedy, {r['config']['max_new_tokens']} new tokens; judge "
             f"{r['config']['judge']}; run time {r['timing']['total_s'] / 60:.1f} min.", "",
             "Decision rule (fixed before running): ablation lowers harmful refusal by >= "
             f"{DECISION_RULE['min_drop_vs_baseline']} vs. baseline and >= "
             f"{DECISION_RULE['min_drop_vs_random']} vs. the random direction; addition raises "
             "harmless refusal by the same margins; every seed must pass; baseline harmful "
             f"refusal < {DECISION_RULE['min_baseline_refusal']} gives NO-BASELINE-REFUSAL.", "",
             *_sink_line(r), f"## Refusal rates (pooled over seeds, 95% {CI_LABEL})", "",
             f"Intervals: {r.get('ci_method', CI_METHOD)}", "",
             "| prompts | arm | refusal rate | 95% CI | n |", "|---|---|---|---|---|"]
    for key, v in r["rates"].items():
        split = ("harmless" if key.endswith("harmless") or "addition" in key else "harmful")
        arm = key.replace("_harmful", "").replace("_harmless", "").replace("_", " ")
        lines.append(f"| {split} | {arm} | {_f(v['rate'], 2)} | [{_f(v['ci_low'], 2)}, "
                     f"{_f(v['ci_high'], 2)}] | {v['n']} |")
    lines += ["", *category_markdown(r.get("category_rates"))]
    lines += ["## Capability (harmless test prompts; CE of the "
              f"{r.get('ce_text', 'baseline completions')}, "
              "KL at the last prompt position vs. baseline)", "",
              "| model | CE (nats/token) | KL |", "|---|---|---|"]
    for k, v in r["capability"].items():
        lines.append(f"| {k.replace('_', ' ')} | {_f(v['ce'])} | {_f(v['kl'], 4)} |")
    lines += ["", "## Per seed", "", "| seed | layer | position | rule | bypass | induce | KL | "
              "ablation | random abl. | addition | random add. | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["seeds"]:
        sel = r["selection"].get(str(s["seed"]), {})
        d = r["directions"][str(s["seed"])]
        rt = s["rates"]
        g = lambda k: _f(rt[k]["rate"], 2) if k in rt else "n/a"  # noqa: E731
        lines.append(f"| {s['seed']} | {d['layer']} | {d['position']} | "
                     f"{'fallback' if sel.get('fallback') else 'strict'} | {_f(sel.get('bypass'))} "
                     f"| {_f(sel.get('induce'))} | {_f(sel.get('kl'))} | {g('ablation')} | "
                     f"{g('random_ablation')} | {g('addition')} | {g('random_addition')} | "
                     f"{s['decision']['verdict']} |")
    lines += ["", "## Target bars", "", "| quantity | value | bar | met |", "|---|---|---|---|"]
    for k, v in r["targets"].items():
        lines.append(f"| {k.replace('_', ' ')} | {_f(v['value'])} | {v['bar']} | "
                     f"{'yes' if v['met'] else '**no**'} |")
    sel_notes = [f"seed {s}: selection rule '{v['rule']}' (random-direction KL "
                 f"{_f(v['kl_random'], 4)}; harmful kept {v['filtering']['harmful_kept']}/"
                 f"{v['filtering']['harmful_total']}, harmless kept "
                 f"{v['filtering']['harmless_kept']}/{v['filtering']['harmless_total']})"
                 for s, v in r["selection"].items()]
    missed = [f"target '{k}' missed: {_f(v['value'])} (bar {v['bar']}){_why(k, r)}"
              for k, v in r["targets"].items() if not v["met"]]
    failed = [f"seed {s['seed']}: decision check '{c}' failed" for s in r["seeds"]
              for c, ok in s["decision"]["checks"].items() if not ok]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in sel_notes + r["notes"] + missed + failed]
    lines += ["", f"Refusal tokens: {r['refusal_tokens']['tokens']} "
              f"({r['refusal_tokens']['source']}).", ""]
    return "\n".join(lines)


def _sink_line(r: dict[str, Any]) -> list[str]:
    sinks = [v.get("sink", {}) for v in r["selection"].values()]
    if not sinks or not any(x.get("rank") for x in sinks):
        return (["Directions: the paper's raw differences in means (no attention-sink "
                 "projection).", ""] if sinks else [])
    ranks = sorted({x.get("rank") for x in sinks})
    kept = ", ".join(f"{x.get('kept_norm_frac_chosen', math.nan):.3f}" for x in sinks)
    return [f"Directions: differences in means projected off the first token's residual "
            f"subspace (the attention sink; rank {ranks}, {sinks[0].get('energy')} of its "
            f"energy); the chosen vectors keep {kept} of their norm. Random controls are drawn "
            "off the same subspace. `--sink-energy 0` gives the paper's exact vectors.", ""]


def _why(target: str, r: dict[str, Any]) -> str:
    """A data-based reason for a missed target bar (empty when none is evident)."""
    rates, cap = r["rates"], r["capability"]
    rate = lambda k: rates[k]["rate"] if k in rates else math.nan  # noqa: E731
    base_h, base_s = rate("baseline_harmful"), rate("baseline_harmless")
    if target == "random_ablation" and base_h < 0.8:
        return (f": the unintervened model refuses only {base_h:.2f} of the held-out harmful "
                "prompts, so no control arm can reach the bar")
    if target == "random_ablation":
        return (f": a random direction alone lowers refusal from {base_h:.2f}, so part of the "
                "effect is a generic ablation cost")
    if target == "ablation":
        return (f": the direction removes refusal on {base_h - rate('ablation'):.2f} of the "
                "prompts (absolute); the rest refuse through something it does not capture")
    if target == "random_addition" and rate("random_addition") > base_s:
        return (f": adding a norm-matched random vector itself raises refusal from {base_s:.2f},"
                " so the vector's norm, not only its direction, matters")
    if target == "addition":
        why = f": addition raises harmless refusal from {base_s:.2f} only"
        ranks = {s: v.get("induce_among_scored") or {} for s, v in r["selection"].items()}
        worse = {s: x for s, x in ranks.items() if x.get("rank", 1) > 1}
        if worse:
            why += ("; the chosen candidates are not the ones that induce refusal "
                    "best on the validation prompts: " + "; ".join(
                        f"seed {s}: induce {r['selection'][s]['induce']:.2f}, rank {x['rank']} of "
                        f"{x['of']} scored (best: layer {x['best']['layer']}, position "
                        f"{x['best']['position']}, {x['best']['induce']:.2f})"
                        for s, x in worse.items()))
        return why
    if target == "orthogonalized_ce" and "random_ablation" in cap:
        b = cap["baseline"]["ce"]
        rnd = cap["random_ablation"]["ce"] / b - 1 if b else math.nan
        return (f": ablating a random direction changes CE by {rnd:+.1%}, so "
                f"{'most' if rnd > 0.5 * (cap['orthogonalized']['ce'] / b - 1) else 'some'} of "
                "the cost is direction-agnostic (projecting any direction out of large "
                "residuals such as the first token's)" if b else "")
    return ""
