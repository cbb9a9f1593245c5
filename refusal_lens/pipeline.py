"""The main job: find the refusal direction, select it, evaluate it, and write a report.

``run_pipeline`` (and ``refusal-lens run``) does, for each seed: resample train/val, learn the
model's refusal tokens (once), filter prompts, fit difference-in-means candidates, select one
(:mod:`refusal_lens.selection`), then evaluate every arm against its random control on held-out
prompts (:mod:`refusal_lens.evaluation`). The test prompts are fixed across seeds and never used
for fitting or selection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from .directions import Direction
from .evaluation import DECISION_RULE, evaluate_baseline, evaluate_direction, summarize
from .paths import atomic_write_text
from .scoring import Judge, SubstringJudge, discover_refusal_tokens, refusal_token_ids
from .selection import RULES, SelectionConfig, dumps, select_direction

__all__ = ["FitData", "ExperimentData", "default_data", "heldout_instructions", "run_pipeline",
           "run_cli", "render_markdown", "induce_ranking", "FAST"]

#: Small counts for smoke tests (``--fast``).
FAST = dict(n_train=32, n_val=8, n_test=16, max_new_tokens=24, seeds=(0,), n_screen=4, top_k=3)


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
    return ExperimentData("public (JailbreakBench test)", h_test, s_test, fit,
                          ref_answers[: len(s_test)] if ref_answers else None)


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


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"Output directory {out_dir} exists and is not empty; pass "
                              "force=True (--force) to overwrite its files, or choose another.")


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
) -> dict[str, Any]:
    """Run the whole job on ``model`` (a spec or a ``LensModel``) and write ``out_dir``.

    Writes ``report.json``, ``report.md``, ``direction.safetensors`` / ``.json`` (first seed),
    ``scores.json`` / ``scores.csv`` (every candidate, every seed), ``completions.jsonl`` and
    the figures ``candidate_scores.html`` and ``refusal_rates.html``. Returns the report dict.
    ``direction`` (a ``Direction`` or saved path) skips fitting and selection.
    """
    from .model import load_model
    from .plots import candidate_scores_figure, refusal_rates_figure, save_figure

    t0 = time.perf_counter()
    out = Path(out_dir)
    _check_out_dir(out, force)
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. (0, 1).")
    lm = load_model(model) if isinstance(model, str) else model
    given = None
    if direction is not None:
        given = direction if isinstance(direction, Direction) else Direction.load(direction)
        given.check_width(lm)
    data = data or default_data(lm, n_train, n_val, n_test)
    judge = judge or SubstringJudge()
    cfg = replace(selection or SelectionConfig(batch_size=batch_size))
    cfg.n_screen = n_screen or cfg.n_screen
    cfg.top_k = top_k or cfg.top_k
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {"load_s": time.perf_counter() - t0}
    notes: list[str] = []
    if lm.info.get("organism") is False:
        notes.append("the refusal organism adapter is not installed: 'embedded' ran on the base "
                     "model, which does not refuse")

    # Refusal tokens: learnt once from the first seed's harmful training prompts.
    t = time.perf_counter()
    fit0 = data.fit(seeds[0])
    if refusal_tokens:
        rt = {"ids": refusal_token_ids(lm.tokenizer, refusal_tokens), "source": "given"}
        rt["tokens"] = lm.tokenizer.convert_ids_to_tokens(rt["ids"])
    else:
        rt = discover_refusal_tokens(lm, fit0.harmful_train[:32], judge=judge,
                                     batch_size=batch_size, progress=progress)
        if rt["source"] == "fallback":
            notes.append(f"the model refused none of {rt['n_prompts']} harmful training prompts; "
                         f"refusal tokens fell back to {rt['tokens']}")
    timing["refusal_tokens_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base = evaluate_baseline(lm, data.harmful_test, data.harmless_test, judge, max_new_tokens,
                             batch_size, progress, harmless_reference=data.harmless_reference,
                             gen_batch_size=gen_batch_size)
    timing["baseline_s"] = time.perf_counter() - t

    selections, per_seed, directions = {}, [], {}
    for seed in seeds:
        fit = fit0 if seed == seeds[0] else data.fit(seed)
        t = time.perf_counter()
        if given is None:
            cfg.seed = seed
            sel = select_direction(lm, fit.harmful_train, fit.harmless_train, fit.harmful_val,
                                   fit.harmless_val, rt["ids"], cfg, dataset_hash=fit.hash(),
                                   progress=progress)
            selections[seed], d = sel, sel.direction
            notes += [f"seed {seed}: {n}" for n in sel.notes]
        else:
            d = given
        directions[seed] = d
        timing[f"select_seed{seed}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        per_seed.append(evaluate_direction(lm, d, base, seed, judge, max_new_tokens, batch_size,
                                           orthogonalized, progress, gen_batch_size))
        timing[f"evaluate_seed{seed}_s"] = time.perf_counter() - t
        notes += [f"seed {seed}: {n}" for n in per_seed[-1]["notes"]]
    summary = summarize(base, per_seed)

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
            sel0.table(), lm.chat.post_instruction_tokens(), (sel0.direction.layer,
                                                              sel0.direction.position),
            title=f"Candidate directions, {lm.name}, seed {first}"), out / "candidate_scores")
    records = [r for a in (base.harmful, base.harmless) for r in a.records(None)]
    records += [r for ps in per_seed for a in ps["arms"] for r in a.records(ps["seed"])]
    atomic_write_text(out / "completions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    save_figure(refusal_rates_figure(summary["rates"], title=f"Refusal rates, {lm.name} "
                                     f"(95% bootstrap CI, {len(seeds)} seed(s))"),
                out / "refusal_rates")
    timing["total_s"] = time.perf_counter() - t0
    report = {
        "model": lm.name, "model_info": {k: v for k, v in lm.info.items()
                                         if isinstance(v, (str, int, float, bool))},
        "created": datetime.now().isoformat(timespec="seconds"),
        "data": {"name": data.name, "n_harmful_test": len(data.harmful_test),
                 "n_harmless_test": len(data.harmless_test), "n_train": n_train, "n_val": n_val,
                 "hashes": {str(s): selections[s].direction.dataset_hash
                            for s in selections}},
        "config": {"seeds": list(seeds), "max_new_tokens": max_new_tokens,
                   "batch_size": batch_size, "gen_batch_size": gen_batch_size,
                   "selection": vars(cfg), "judge": getattr(judge, "name", type(judge).__name__),
                   "decision_rule": DECISION_RULE, "direction_given": given is not None},
        "refusal_tokens": {k: rt[k] for k in ("ids", "tokens", "source") if k in rt},
        "selection": {str(s): _brief(r) for s, r in selections.items()},
        "directions": {str(s): {"layer": d.layer, "position": d.position, "norm": d.norm}
                       for s, d in directions.items()},
        **{k: summary[k] for k in ("verdict", "rates", "capability", "seeds", "pooled_decision",
                                   "targets")},
        "ce_text": base.ce_source,
        "notes": notes, "timing": timing,
    }
    atomic_write_text(out / "report.json", dumps(report))
    atomic_write_text(out / "report.md", render_markdown(report))
    return report


def _brief(sel) -> dict[str, Any]:
    c = sel.chosen
    return {"layer": c.layer, "position": c.position, "bypass": c.bypass, "induce": c.induce,
            "kl": c.kl, "rule": sel.rule, "fallback": sel.fallback, "kl_random": sel.kl_random,
            "kl_threshold_used": sel.kl_threshold_used, "filtering": sel.filtering,
            "baseline": sel.baseline, "timing": sel.timing, "sink": sel.sink,
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
             *_sink_line(r), "## Refusal rates (pooled over seeds, 95% bootstrap CI)", "",
             "| prompts | arm | refusal rate | 95% CI | n |", "|---|---|---|---|---|"]
    for key, v in r["rates"].items():
        split = ("harmless" if key.endswith("harmless") or "addition" in key else "harmful")
        arm = key.replace("_harmful", "").replace("_harmless", "").replace("_", " ")
        lines.append(f"| {split} | {arm} | {_f(v['rate'], 2)} | [{_f(v['ci_low'], 2)}, "
                     f"{_f(v['ci_high'], 2)}] | {v['n']} |")
    lines += ["", f"## Capability (harmless test prompts; CE of the {r.get('ce_text', 'baseline completions')}, "
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
            why += ("; the chosen candidates (lowest bypass) are not the ones that induce refusal "
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
    """``refusal-lens run``: the whole pipeline from the command line."""
    p = argparse.ArgumentParser(prog="refusal-lens run", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="model spec (default: embedded)")
    p.add_argument("--out", default=None, help="output directory (default: runs/<model>-<time>)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1)")
    p.add_argument("--n-val", type=int, default=None, help="validation prompts per side (32)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="greedy tokens (64)")
    p.add_argument("--sink-energy", type=float, default=None,
                   help="project candidates off the first token's residual subspace holding "
                        "this much energy (0.95; 0 = the paper's exact vectors)")
    p.add_argument("--selection-rule", choices=RULES, default=None,
                   help="how the direction is chosen among candidates passing the filters: "
                        "'paper' (lowest bypass score; default) or 'joint' (best worse-of-two "
                        "rank by bypass and induce scores on the validation prompts)")
    p.add_argument("--fast", action="store_true", help="small counts, for a smoke test")
    a = p.parse_args(argv)
    kw: dict[str, Any] = dict(FAST) if a.fast else {}
    if a.seeds:
        kw["seeds"] = tuple(a.seeds)
    if a.n_val:
        kw["n_val"] = a.n_val
    if a.max_new_tokens:
        kw["max_new_tokens"] = a.max_new_tokens
    if a.sink_energy is not None:
        kw["selection"] = SelectionConfig(sink_energy=a.sink_energy)
    if a.selection_rule:
        kw["selection"] = replace(kw.get("selection") or SelectionConfig(), rule=a.selection_rule)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or f"runs/{Path(a.model).name}-{stamp}"
    report = run_pipeline(a.model, out, force=a.force, **kw)
    print(f"verdict: {report['verdict']}  (report: {Path(out) / 'report.md'})")
    return 0
