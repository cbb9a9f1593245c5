"""Selection rules on held-out test prompts: the paper's rule (lowest bypass) against the joint
rule (best worse-of-two rank by bypass and induce), both applied to the same validation scores.

Both rules were fixed in ``refusal_lens.selection`` before this was run; the test prompts only
report what each rule's choice does, they choose nothing. For each seed: select on that seed's
train/val prompts (the pipeline's data and settings), save each rule's direction in ``--dirs``
(``direction-<rule>-seed<s>.safetensors``, read by ``analyses/strength_sweep.py``), then
evaluate ablation (harmful test prompts) and addition (harmless test prompts) of each distinct
choice beside norm-matched random directions. ``--scores`` (a run's ``scores.json`` layout)
applies both rules to recorded validation scores for the seeds it holds instead of rescoring
them, refits only the chosen candidates' vectors, and checks that the refitted vector of the
run's own rule has the recorded direction's norm. Writes figures/selection_rules.{json,html};
with that JSON present it only re-renders the figure (``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refusal_lens import analysis_scripts as scripts
from refusal_lens.datasets import default_data
from refusal_lens.directions import Direction
from refusal_lens.evaluation import evaluate_baseline, evaluate_direction, summarize
from refusal_lens.plots_beyond import selection_rules_figure
from refusal_lens.report_md import induce_ranking
from refusal_lens.scoring import discover_refusal_tokens
from refusal_lens.selection import (
    RULES,
    SelectionConfig,
    choose_from_table,
    fit_candidates,
    rule_direction_path,
    select_direction,
)


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/selection_rules", seeds=True)
    scripts.add_fit_counts(p)
    scripts.add_count(p, "--n-test", 16, 100, "held-out test prompts per side")
    scripts.add_tokens_option(p, 16, 32)
    p.add_argument("--dirs", default=scripts.RULE_DIRS, metavar="DIR",
                   help="where each rule's direction is saved "
                        "(direction-<rule>-seed<s>.safetensors)")
    p.add_argument("--scores", default=None, metavar="JSON",
                   help="recorded validation scores to choose from instead of rescoring: a "
                        "run's scores.json ({'seeds': {seed: {'candidates', 'kl_random', "
                        "'layer', 'position', 'chosen', ...}}})")
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    return selection_rules_figure(summary["rules"], title=(
        f"Selection rules on held-out prompts<br><sup>{summary['model']}; seeds "
        f"{summary['seeds']}; {summary['n_test']} + {summary['n_test']} test prompts, "
        f"{summary['new_tokens']} greedy tokens; pooled over seeds, 95% CI</sup>"))


def _validation(sel, rule: str) -> dict:
    pick = sel.by_rule[rule]
    c = next(s for s in sel.scores if (s.layer, s.position) == (pick["layer"], pick["position"]))
    return {"layer": c.layer, "position": c.position, "bypass": c.bypass, "induce": c.induce,
            "kl": c.kl, "rule_text": pick["rule"], "fallback": pick["fallback"],
            "induce_rank": induce_ranking(sel.table(), c.layer, c.position)}


def _from_recorded(model, fit, refusal_ids, rec: dict, seed: int, summary: dict) -> dict:
    """Both rules' choices from recorded scores, their vectors refitted on ``fit``."""
    picks = {r: choose_from_table(rec["candidates"], rec["kl_random"], model.n_layers, r,
                                  bar=rec.get("induce_bar", 0.0))  # 0: runs before the bar
             for r in RULES}
    layers = sorted({p["layer"] for p in picks.values()})
    positions = sorted({p["position"] for p in picks.values()})
    fitted = fit_candidates(model, fit.harmful_train, fit.harmless_train, refusal_ids, layers,
                            positions, SelectionConfig(seed=seed), progress=False)
    out, table = {}, {(c["layer"], c["position"]): c for c in rec["candidates"]}
    for rule, p in picks.items():
        li, pi = layers.index(p["layer"]), positions.index(p["position"])
        c = table[(p["layer"], p["position"])]
        out[rule] = Direction(
            fitted["diffs"][li, pi].clone(), p["layer"], p["position"], model=model.name,
            dataset_hash=fit.hash(), seed=seed,
            meta={"bypass": c["bypass"], "induce": c["induce"], "kl": c["kl"], "rule": p["rule"],
                  "fallback": p["fallback"], "selection_rule": rule, "scores": "recorded"},
            tensors={"mean_diff": fitted["raw"][li, pi].float().clone(),
                     "sink_basis": fitted["basis"].float()})
    own = rec.get("selection_rule") or "paper"  # runs before the joint default used 'paper'
    norm = rec["norm"] if "norm" in rec else rec["chosen"]["norm"]
    mine = out[own]
    if (mine.layer, mine.position) != (rec["layer"], rec["position"]) or \
            abs(mine.norm / norm - 1) > 1e-3:
        raise SystemExit(f"seed {seed}: the recorded scores do not reproduce the recorded "
                         f"direction (layer {rec['layer']}, norm {norm:.4f}; refit: layer "
                         f"{mine.layer}, norm {mine.norm:.4f}): rescore without --scores.")
    summary["validation"][str(seed)] = {
        "recorded": True, "kl_random": rec["kl_random"],
        "by_rule": {r: {**p, **{k: table[(p["layer"], p["position"])][k]
                                for k in ("bypass", "induce", "kl")}} for r, p in picks.items()},
        "scored": [{k: c[k] for k in ("layer", "position", "bypass", "induce", "kl")}
                   for c in rec["candidates"] if c.get("scored")]}
    print(f"seed {seed} (recorded scores): " + ", ".join(
        f"{r} -> layer {p['layer']} pos {p['position']}" for r, p in picks.items()),
        file=sys.stderr)
    return out


def _select(model, fit, refusal_ids, seed: int, summary: dict) -> dict[str, Direction]:
    """Both rules' choices from scoring this seed's candidates on its validation prompts."""
    sel = select_direction(model, fit.harmful_train, fit.harmless_train, fit.harmful_val,
                           fit.harmless_val, refusal_ids, SelectionConfig(seed=seed),
                           dataset_hash=fit.hash(), progress=False)
    summary["validation"][str(seed)] = {
        "by_rule": {r: _validation(sel, r) for r in RULES},
        "scored": [{k: s[k] for k in ("layer", "position", "bypass", "induce", "kl")}
                   for s in sel.table() if s["scored"]],
        "kl_random": sel.kl_random}
    print(f"seed {seed}: " + ", ".join(f"{r} -> layer {v['layer']} pos {v['position']}"
                                      for r, v in sel.by_rule.items()), file=sys.stderr)
    return {rule: sel.direction_for(rule) for rule in RULES}


def measure(args: argparse.Namespace) -> dict:
    fix = "pass a run's scores.json, or leave --scores out to rescore"
    recorded = scripts.read_json(args.scores, fix)["seeds"] if args.scores else {}
    m = scripts.Measurement(args.out)
    model = m.load_model(args.model)
    data = default_data(model, args.n_train, args.n_val).evenly_spaced(args.n_test)
    fit0 = data.fit(args.seeds[0])
    rt = discover_refusal_tokens(model, fit0.harmful_train[:32], progress=False)
    dirs = Path(args.dirs)
    dirs.mkdir(parents=True, exist_ok=True)
    summary = m.summary
    summary |= {"model": model.name, "seeds": args.seeds, "n_test": args.n_test,
                "n_train": args.n_train, "n_val": args.n_val, "new_tokens": args.max_new_tokens,
                "refusal_tokens": rt["tokens"], "validation": {}, "rules": {}}
    directions: dict[str, dict[int, Direction]] = {r: {} for r in RULES}
    for seed in args.seeds:
        fit = fit0 if seed == args.seeds[0] else data.fit(seed)
        if str(seed) in recorded:
            with m.stage(f"refit_seed{seed}"):
                chosen = _from_recorded(model, fit, rt["ids"], recorded[str(seed)], seed,
                                        summary)
        else:
            with m.stage(f"select_seed{seed}"):
                chosen = _select(model, fit, rt["ids"], seed, summary)
        for rule, d in chosen.items():
            d.save(rule_direction_path(dirs, rule, seed))
            directions[rule][seed] = d
        m.save()
    with m.stage("baseline"):
        base = evaluate_baseline(model, data.harmful_test, data.harmless_test,
                                 max_new_tokens=args.max_new_tokens, progress=False,
                                 harmless_reference=data.harmless_reference, gen_batch_size=64)
    summary["baseline_flags"] = {"harmful": base.harmful.flags, "harmless": base.harmless.flags}
    summary["harmful_test"] = list(data.harmful_test)
    # the joint rule first (the question asked of it), then the paper's rule; a choice both
    # rules share is evaluated once
    done: dict[tuple[int, int, int], dict] = {}
    for rule in ("joint", "paper"):
        per_seed = []
        for seed in args.seeds:
            d = directions[rule][seed]
            key = (seed, d.layer, d.position)
            if key not in done:
                with m.stage(f"evaluate_{rule}_seed{seed}"):
                    done[key] = evaluate_direction(model, d, base, seed,
                                                   max_new_tokens=args.max_new_tokens,
                                                   orthogonalized=False, progress=False,
                                                   gen_batch_size=64)
            per_seed.append(done[key])
        s = summarize(base, per_seed)
        summary["rules"][rule] = {
            "rates": s["rates"], "capability": s["capability"], "verdict": s["verdict"],
            "targets": s["targets"],
            "seeds": [{"seed": x["seed"], "rates": {k: v["rate"] for k, v in x["rates"].items()},
                       "capability": x["capability"],
                       "flags": {a.name: a.flags for a in done[(x["seed"],
                                 directions[rule][x["seed"]].layer,
                                 directions[rule][x["seed"]].position)]["arms"]},
                       "layer": directions[rule][x["seed"]].layer,
                       "position": directions[rule][x["seed"]].position} for x in s["seeds"]]}
        m.save()
    return summary


if __name__ == "__main__":
    sys.exit(main())
