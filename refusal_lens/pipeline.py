"""The main job: find the refusal direction, select it, evaluate it, and write a report.

``run_pipeline`` (and ``refusal-lens run``) does, for each seed: resample train/val, learn the
model's refusal tokens (once), filter prompts, fit difference-in-means candidates, select one
(:mod:`refusal_lens.selection`), then evaluate every arm against its random control on held-out
prompts (:mod:`refusal_lens.evaluation`). The test prompts are fixed across seeds and never used
for fitting or selection.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .console import note, plan, run_summary, stage, step, tracked
from .paths import atomic_write_text
from .runargs import FAST, check_run_args, parse_run_args

if TYPE_CHECKING:  # torch-heavy modules are imported where used: `refusal-lens run --help` is fast
    from .directions import Direction
    from .scoring import Judge
    from .selection import SelectionConfig

__all__ = ["FitData", "ExperimentData", "default_data", "heldout_instructions", "run_pipeline",
           "run_cli", "render_markdown", "induce_ranking", "check_run_args", "FAST"]

#: Progress steps one seed's selection counts for, so that the time left is truer: on the
#: embedded organism selection takes about as long as four evaluation arms (README run times).
SELECT_STEPS = 4


@dataclass
class FitData:
    """Training and validation instructions for one seed."""

    harmful_train: list[str]
    harmful_val: list[str]
    harmless_train: list[str]
    harmless_val: list[str]

    def hash(self) -> str:
        payload = json.dumps({k: sorted(v) for k, v in vars(self).items()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ExperimentData:
    """Fixed held-out test prompts plus a per-seed source of train/val prompts."""

    name: str
    harmful_test: list[str]
    harmless_test: list[str]
    fit: Callable[[int], FitData]
    # reference answers to ``harmless_test`` for the cross-entropy check (``None``: the
    # model's own baseline completions are scored instead)
    harmless_reference: list[str] | None = None
    # the category of each ``harmful_test`` prompt (``None``: the data has no categories)
    harmful_categories: list[str] | None = None

    def evenly_spaced(self, n: int) -> "ExperimentData":
        """A copy whose test sets keep ``n`` prompts per side, spread evenly over each (see
        :func:`refusal_lens.datasets.evenly_spaced`), with references and categories kept
        aligned to their prompts."""
        from .datasets import evenly_spaced

        def cut(items: list | None) -> list | None:
            return None if items is None else evenly_spaced(items, n)

        return replace(self, harmful_test=cut(self.harmful_test),
                       harmless_test=cut(self.harmless_test),
                       harmless_reference=cut(self.harmless_reference),
                       harmful_categories=cut(self.harmful_categories))


def _draw(pool: Sequence[str], n: int, seed: int, side: str) -> list[str]:
    if len(pool) < n:
        raise ValueError(f"Need {n} {side} instructions for train + val, only {len(pool)} remain.")
    pool = list(pool)
    random.Random(f"fit:{side}:{seed}").shuffle(pool)
    return pool[:n]


def _fit_from_pools(harmful: Sequence[str], harmless: Sequence[str], n_train: int, n_val: int):
    def fit(seed: int) -> FitData:
        h = _draw(harmful, n_train + n_val, seed, "harmful")
        s = _draw(harmless, n_train + n_val, seed, "harmless")
        return FitData(h[:n_train], h[n_train:], s[:n_train], s[n_train:])
    return fit


def default_data(model: Any, n_train: int = 128, n_val: int = 32,
                 n_test: int | None = None) -> ExperimentData:
    """The data for ``model``: its own prompts for the synthetic model, else the public sets.

    Public sets: test = JailbreakBench's 100 behaviours and the standard harmless test split.
    Seed 0 with the default sizes uses the standard train/val splits; other seeds draw train/val
    from the pools minus the test and organism-training prompts (so nothing the organism was
    fine-tuned on, or that is scored, is used for fitting).
    """
    syn = getattr(model, "info", {}).get("synthetic")
    if syn is not None:
        k = min(100 if n_test is None else n_test, len(syn.harmful) // 4)
        return ExperimentData("synthetic", syn.harmful[:k], syn.harmless[:k],
                              _fit_from_pools(syn.harmful[k:], syn.harmless[k:], n_train, n_val))
    ref, hp, sp = _public_pools()
    h_test = ref.harmful_test[:n_test] if n_test else ref.harmful_test
    s_test = ref.harmless_test[:n_test] if n_test else ref.harmless_test
    drawn = _fit_from_pools(hp, sp, n_train, n_val)

    def fit(seed: int) -> FitData:
        if seed == 0 and n_train == 128 and n_val == 32:
            return FitData(ref.harmful_train, ref.harmful_val, ref.harmless_train,
                           ref.harmless_val)
        return drawn(seed)

    ref_answers = ref.responses("harmless_test")
    cats = [r["category"] for r in ref.records["harmful_test"]][: len(h_test)]
    return ExperimentData("public (JailbreakBench test)", h_test, s_test, fit,
                          ref_answers[: len(s_test)] if ref_answers else None, cats)


def _public_pools() -> tuple[Any, list[str], list[str]]:
    """The standard splits, and the harmful / harmless pool instructions outside their test
    sets and the organism's training prompts (what train/val prompts are drawn from)."""
    from .datasets import load_pools, load_splits, norm_key

    ref = load_splits(seed=0)  # fixes the test sets and the organism's training prompts
    banned = {norm_key(x) for x in (ref.harmful_test + ref.harmless_test + ref.harmful_organism
                                    + ref.harmless_organism)}
    harmful_pool, harmless_pool = load_pools()
    hp = [r["instruction"] for r in harmful_pool if norm_key(r["instruction"]) not in banned]
    sp = [r["instruction"] for r in harmless_pool if norm_key(r["instruction"]) not in banned]
    return ref, hp, sp


def heldout_instructions(exclude: Sequence[FitData], n: int = 100, side: str = "harmless",
                         seed: int = 0) -> list[str]:
    """``n`` public instructions of ``side`` that are in no test set, no organism training set
    and none of the ``exclude`` fits' train/val prompts: a development set for side analyses
    that must not touch the test prompts or the prompts a direction was fitted on."""
    from .datasets import norm_key

    if side not in ("harmful", "harmless"):
        raise ValueError(f"side must be 'harmful' or 'harmless', got {side!r}.")
    _, hp, sp = _public_pools()
    used = {norm_key(x) for f in exclude for x in (f.harmful_train + f.harmful_val
                                                   + f.harmless_train + f.harmless_val)}
    pool = [x for x in (hp if side == "harmful" else sp) if norm_key(x) not in used]
    random.Random(f"heldout:{side}:{seed}").shuffle(pool)
    if len(pool) < n:
        raise ValueError(f"Only {len(pool)} held-out {side} instructions remain; ask for fewer.")
    return pool[:n]


@tracked
def run_pipeline(
    model: Any = "embedded",
    out_dir: str | Path = "runs/embedded",
    seeds: Sequence[int] = (0, 1),
    n_train: int = 128,
    n_val: int = 32,
    n_test: int | None = 100,
    max_new_tokens: int = 64,
    force: bool = False,
    *,
    resume: bool = False,
    data: ExperimentData | None = None,
    direction: Direction | str | Path | None = None,
    refusal_tokens: Sequence[str] | None = None,
    judge: Judge | None = None,
    selection: SelectionConfig | None = None,
    n_screen: int | None = None,
    top_k: int | None = None,
    batch_size: int = 32,
    orthogonalized: bool = True,
    progress: bool = True,
    gen_batch_size: int = 64,
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole job on ``model`` (a spec or a ``LensModel``) and write ``out_dir``.

    Writes ``report.json``, ``report.md``, ``direction.safetensors`` / ``.json`` (first seed),
    ``scores.json`` / ``scores.csv`` (every candidate, every seed), ``completions.jsonl`` and
    the figures ``candidate_scores.html`` and ``refusal_rates.html``. Returns the report dict.
    ``direction`` (a ``Direction`` or saved path) skips fitting and selection.

    Every argument and ``out_dir`` are checked before any model work. Each finished stage is
    saved under ``out_dir`` as it completes (:mod:`refusal_lens.rundir`); ``resume`` continues
    an interrupted run with the same configuration, ``force`` empties an earlier run's directory.
    ``placement``: ``load_model`` keyword arguments for a spec (device, dtype, device_map, ...).
    """
    from .categories import category_rates
    from .directions import Direction
    from .evaluation import (CI_LABEL, CI_METHOD, DECISION_RULE, evaluate_baseline,
                             evaluate_direction, evaluation_steps, summarize)
    from .model import load_model
    from .plots import candidate_scores_figure, refusal_rates_figure, save_figure
    from .report_html import write_report_html
    from .rundir import RunDir, check_out_dir, data_id, direction_id, environment, weights_hash
    from .scoring import SubstringJudge, discover_refusal_tokens, refusal_token_ids
    from .selection import SelectionConfig, dumps, select_direction

    t0 = time.perf_counter()
    check_run_args(seeds, n_train, n_val, n_test, max_new_tokens, batch_size, gen_batch_size,
                   n_screen, top_k, selection)
    seeds = tuple(seeds)
    given = None
    if direction is not None:  # a file's errors before any model work
        given = direction if isinstance(direction, Direction) else Direction.load(direction)
    out = check_out_dir(out_dir, force, resume)
    cfg = replace(selection or SelectionConfig(batch_size=batch_size))
    cfg.n_screen = cfg.n_screen if n_screen is None else n_screen
    cfg.top_k = cfg.top_k if top_k is None else top_k
    judge = judge or SubstringJudge()
    config = {"model": model if isinstance(model, str) else getattr(model, "name", str(model)),
              "seeds": list(seeds), "n_train": n_train, "n_val": n_val, "n_test": n_test,
              "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "gen_batch_size": gen_batch_size, "selection": vars(cfg),
              "judge": getattr(judge, "name", type(judge).__name__),
              "orthogonalized": orthogonalized, "refusal_tokens": list(refusal_tokens or []),
              "direction": None if given is None else direction_id(given),
              "placement": placement}
    run = RunDir(out, config, force=force, resume=resume)
    lm = load_model(model, **(placement or {})) if isinstance(model, str) else model
    base_steps, seed_steps = evaluation_steps(orthogonalized)
    plan((not refusal_tokens) + base_steps
         + len(seeds) * (SELECT_STEPS * (given is None) + seed_steps),
         f"refusal-lens run ({lm.name})", enabled=progress)
    notes: list[str] = []
    if given is not None:
        notes += given.check_width(lm)
    data = data or default_data(lm, n_train, n_val, n_test)
    inputs = {"weights_sha256": weights_hash(lm), "data": data_id(data, seeds),
              "environment": environment()}
    run.check_inputs(inputs)
    timing: dict[str, float] = {"load_s": time.perf_counter() - t0}
    if lm.info.get("organism") is False:
        notes.append("the refusal organism adapter is not installed: 'embedded' ran on the base "
                     "model, which does not refuse")

    def saved(name: str, timing_key: str, compute: Callable[[], Any]) -> Any:
        """A finished stage from ``run``, else computed now and saved at once."""
        if run.done(name):
            timing[timing_key] = run.seconds(name)
            return run.load(name)
        t = time.perf_counter()
        value = compute()
        timing[timing_key] = time.perf_counter() - t
        run.save(name, value, timing[timing_key])
        return value

    # Refusal tokens: learnt once from the first seed's harmful training prompts.
    fit0 = data.fit(seeds[0])

    def tokens() -> dict[str, Any]:
        if refusal_tokens:
            ids = refusal_token_ids(lm.tokenizer, refusal_tokens)
            return {"ids": ids, "source": "given",
                    "tokens": lm.tokenizer.convert_ids_to_tokens(ids)}
        with step("refusal tokens"):
            return discover_refusal_tokens(lm, fit0.harmful_train[:32], judge=judge,
                                           batch_size=batch_size, progress=progress)

    rt = saved("refusal_tokens", "refusal_tokens_s", tokens)
    if rt["source"] == "fallback":
        notes.append(f"the model refused none of {rt['n_prompts']} harmful training prompts; "
                     f"refusal tokens fell back to {rt['tokens']}")
    base = saved("baseline", "baseline_s", lambda: evaluate_baseline(
        lm, data.harmful_test, data.harmless_test, judge, max_new_tokens, batch_size, progress,
        harmless_reference=data.harmless_reference, gen_batch_size=gen_batch_size))

    selections, per_seed, directions = {}, [], {}
    for seed in seeds:
        fit = fit0 if seed == seeds[0] else data.fit(seed)
        if given is None:
            cfg.seed = seed
            def select() -> Any:
                with step(f"seed {seed} · selection", weight=SELECT_STEPS):
                    return select_direction(lm, fit.harmful_train, fit.harmless_train,
                                            fit.harmful_val, fit.harmless_val, rt["ids"], cfg,
                                            dataset_hash=fit.hash(), progress=progress)

            sel = saved(f"selection-seed{seed}", f"select_seed{seed}_s", select)
            selections[seed], d = sel, sel.direction
            notes += [f"seed {seed}: {n}" for n in sel.notes]
        else:
            d = given
            timing[f"select_seed{seed}_s"] = 0.0
        directions[seed] = d
        arm_stage = f"evaluation-seed{seed}-{{}}".format  # each arm is saved as it finishes
        with stage(f"seed {seed}"):
            per_seed.append(saved(f"evaluation-seed{seed}", f"evaluate_seed{seed}_s",
                                  lambda: evaluate_direction(
                                      lm, d, base, seed, judge, max_new_tokens, batch_size,
                                      orthogonalized, progress, gen_batch_size,
                                      saved={n.rpartition("-")[2]: run.load(n) for n in
                                             run.stages(arm_stage(""))},
                                      on_arm=lambda name, rec: run.save(
                                          arm_stage(name), rec, rec["arm"].seconds))))
        notes += [f"seed {seed}: {n}" for n in per_seed[-1]["notes"]]
    summary = summarize(base, per_seed)
    note("writing files and figures")

    # ---- files -------------------------------------------------------------------------
    first = seeds[0]
    for i, (seed, d) in enumerate(directions.items()):
        if given is None:
            d.meta = {**d.meta, "selection": _brief(selections[seed])}
        d.save(out / ("direction" if i == 0 else f"direction-seed{seed}"))
    if selections:
        atomic_write_text(out / "scores.json", dumps(
            {"seeds": {str(s): r.to_json() for s, r in selections.items()}}))
        csv = []
        for s, r in selections.items():
            lines = r.to_csv().splitlines()
            csv += (["seed," + lines[0]] if not csv else []) + [f"{s},{x}" for x in lines[1:]]
        atomic_write_text(out / "scores.csv", "\n".join(csv) + "\n")
        sel0 = selections[first]
        save_figure(candidate_scores_figure(
            sel0.table(), _position_tokens(lm), (sel0.direction.layer,
                                                              sel0.direction.position),
            title=f"Candidate directions, {lm.name}, seed {first}"), out / "candidate_scores")
    records = [r for a in (base.harmful, base.harmless) for r in a.records(None)]
    records += [r for ps in per_seed for a in ps["arms"] for r in a.records(ps["seed"])]
    atomic_write_text(out / "completions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    save_figure(refusal_rates_figure(summary["rates"], title=f"Refusal rates, {lm.name} "
                                     f"(95% {CI_LABEL}, {len(seeds)} seed(s))"),
                out / "refusal_rates")
    timing["total_s"] = time.perf_counter() - t0
    report = {
        "model": lm.name, "model_info": {k: v for k, v in lm.info.items()
                                         if isinstance(v, (str, int, float, bool))},
        "placement": lm.info.get("placement"),
        "created": run.created,
        "data": {"name": data.name, "n_harmful_test": len(data.harmful_test),
                 "n_harmless_test": len(data.harmless_test), "n_train": n_train, "n_val": n_val,
                 "hashes": {str(s): selections[s].direction.dataset_hash
                            for s in selections}},
        "config": {"seeds": list(seeds), "max_new_tokens": max_new_tokens,
                   "batch_size": batch_size, "gen_batch_size": gen_batch_size,
                   "selection": vars(cfg), "judge": getattr(judge, "name", type(judge).__name__),
                   "decision_rule": DECISION_RULE, "direction_given": given is not None,
                   "hash": run.hash, "run": run.config},
        "environment": environment(), "model_weights_sha256": inputs["weights_sha256"],
        "refusal_tokens": {k: rt[k] for k in ("ids", "tokens", "source") if k in rt},
        "selection": {str(s): _brief(r) for s, r in selections.items()},
        "directions": {str(s): {"layer": d.layer, "position": d.position, "norm": d.norm}
                       for s, d in directions.items()},
        "position_tokens": _position_tokens(lm),
        **{k: summary[k] for k in ("verdict", "rates", "capability", "seeds", "pooled_decision",
                                   "targets")},
        "category_rates": category_rates(records, data.harmful_test, data.harmful_categories),
        "ci_method": summary.get("ci_method", CI_METHOD),
        "ce_text": base.ce_source,
        "notes": notes, "timing": timing,
    }
    atomic_write_text(out / "report.json", dumps(report))
    atomic_write_text(out / "report.md", render_markdown(report))
    write_report_html(out, lm, directions[first], selections.get(first))
    return report


def _position_tokens(lm: Any) -> list[str]:
    """The post-instruction template tokens as text (labels of the candidate positions)."""
    return [lm.tokenizer.decode([i]) for i in lm.chat.post_instruction_ids()]


def _brief(sel) -> dict[str, Any]:
    c = sel.chosen
    return {"layer": c.layer, "position": c.position, "bypass": c.bypass, "induce": c.induce,
            "kl": c.kl, "rule": sel.rule, "fallback": sel.fallback, "kl_random": sel.kl_random,
            "kl_threshold_used": sel.kl_threshold_used, "filtering": sel.filtering,
            "baseline": sel.baseline, "timing": sel.timing, "sink": sel.sink,
            "induce_bar": sel.induce_bar, "by_rule": sel.by_rule,
            "induce_among_scored": induce_ranking(sel.table(), c.layer, c.position)}


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


def run_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens run``: the whole pipeline from the command line (options: see
    :func:`refusal_lens.runargs.parse_run_args`; all checked before the model is loaded)."""
    a, kw = parse_run_args(argv, __doc__.splitlines()[0])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or f"runs/{Path(a.model).name}-{stamp}"
    t0 = time.time()
    report = run_pipeline(a.model, out, force=a.force, resume=a.resume, progress=not a.quiet,
                          **kw)
    print(run_summary(report, out, since=t0))
    return 0
