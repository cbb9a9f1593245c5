"""The main job: find the refusal direction, select it, evaluate it, and write a report.

``run_pipeline`` (and ``refusal-lens run``) does, for each seed: resample train/val, learn the
model's refusal tokens (once), filter prompts, fit difference-in-means candidates, select one
(:mod:`refusal_lens.selection`), then evaluate every arm against its random control on held-out
prompts (:mod:`refusal_lens.evaluation`). The test prompts are fixed across seeds and never used
for fitting or selection.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .console import note, plan, run_summary, stage, step, tracked
from .paths import atomic_write_text
from .report_md import induce_ranking, render_markdown
from .runargs import FAST, check_run_args, parse_run_args

if TYPE_CHECKING:  # torch-heavy modules are imported where used: `refusal-lens run --help` is fast
    from .datasets import ExperimentData
    from .directions import Direction
    from .scoring import Judge
    from .selection import SelectionConfig

__all__ = ["run_pipeline", "run_cli", "check_run_args", "FAST"]

#: Progress steps one seed's selection counts for, so that the time left is truer: on the
#: embedded organism selection takes about as long as four evaluation arms (README run times).
SELECT_STEPS = 4


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
    from .datasets import default_data
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
