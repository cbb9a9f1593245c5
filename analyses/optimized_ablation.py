"""Optimised ablation, heretic-style: per-layer ablation weights from a kernel searched with
Optuna (multi-objective TPE: refusals on harmful validation prompts vs KL on harmless
validation prompts), for each seed's default-rule direction; the chosen point
(``refusal_lens.optimized_ablation.choose_point``, fixed before any test measurement) evaluated
on held-out test prompts beside single-direction ablation and a norm-matched random direction.

Reads the directions ``analyses/selection_rules.py`` saved (``--dirs``); the search uses that
seed's validation prompts only. Writes figures/optimized_ablation.{json,html} (the Pareto
figure); with that JSON present it only re-renders the figure (``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from refusal_lens import load_model
from refusal_lens.directions import Direction, random_like
from refusal_lens.interventions import ablation
from refusal_lens.optimized_ablation import (
    LayerWeights,
    search_weights,
    weighted_hooks,
    weighted_orthogonalize,
)
from refusal_lens.export import export_hf
from refusal_lens.paths import atomic_write_text
from refusal_lens.datasets import default_data
from refusal_lens.figure_files import save_figure
from refusal_lens.plots_beyond import pareto_figure
from refusal_lens.selection import RULES, dumps, rule_direction_path
from refusal_lens.sweeps import Meter

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rule", choices=RULES, default=RULES[0])
    p.add_argument("--dirs", default="runs/selection_rules")
    p.add_argument("--trials", type=int, default=6 if FAST else 40)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per seed's search (stops early; the trial count is recorded)")
    p.add_argument("--separate", action="store_true",
                   help="separate kernels for attention and MLP writes")
    p.add_argument("--val-tokens", type=int, default=16, help="greedy tokens in the search")
    p.add_argument("--n-train", type=int, default=32 if FAST else 128)
    p.add_argument("--n-val", type=int, default=8 if FAST else 32)
    p.add_argument("--n", type=int, default=8 if FAST else 50, help="test prompts per side")
    p.add_argument("--tokens", type=int, default=16 if FAST else 32, help="greedy tokens, test")
    p.add_argument("--out", default="figures/optimized_ablation")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write the first seed's chosen point as orthogonalized weights "
                        "(a Hugging Face directory; the per-layer weights in refusal_lens.json)")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
    res = summary["seeds"]
    fig = pareto_figure([r["search"] for r in res], title=(
        f"Optimised ablation (kernel weights, multi-objective TPE)<br><sup>{summary['model']}; "
        f"{res[0]['search']['n_trials']} trials per seed on {res[0]['search']['n_harmful_val']}"
        f" + {res[0]['search']['n_harmless_val']} validation prompts, "
        f"{res[0]['search']['max_new_tokens']} greedy tokens</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    if args.export:
        first = res[0]
        model = load_model(args.model)
        d = Direction.load(rule_direction_path(args.dirs, summary["rule"], first["seed"]),
                           model=model)
        print(f"wrote {export_hf(weighted_orthogonalize(model, d, _weights(first)), args.export)}",
              file=sys.stderr)
    return 0


def _weights(seed_result: dict) -> LayerWeights:
    return LayerWeights(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in seed_result["search"]["chosen"]["weights"].items()})


def measure(args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    data = default_data(model, args.n_train, args.n_val).evenly_spaced(args.n)
    summary = {"model": model.name, "rule": args.rule, "seeds": []}
    for seed in args.seeds:
        d = Direction.load(rule_direction_path(args.dirs, args.rule, seed), model=model)
        fit = data.fit(seed)
        rand = random_like(d.vector, seed=10_000 + seed, basis=d.tensors.get("sink_basis"))
        search = search_weights(model, d, fit.harmful_val, fit.harmless_val, args.trials, seed,
                                args.separate, args.val_tokens, timeout_s=args.timeout,
                                random_vector=rand)
        t = time.perf_counter()
        meter = Meter(model, data.harmless_test, data.harmless_reference,
                      max_new_tokens=args.tokens, batch_size=64, seed=seed)
        chosen = _weights({"search": search})
        test = {"baseline": meter.baseline(data.harmful_test)}
        for name, hooks in (("chosen", weighted_hooks(model, d, chosen)),
                            ("single_direction", [ablation(model, d)]),
                            ("random", [ablation(model, rand)])):
            test[name] = {"refusal": meter.refusal(data.harmful_test, hooks)} | \
                meter.capability(hooks)
            print(f"seed {seed} {name}: refusal {test[name]['refusal']['rate']:.2f}, KL "
                  f"{test[name]['kl']:.3f}, CE {test[name]['ce']:.3f}", file=sys.stderr)
        summary["seeds"].append({"seed": seed, "layer": d.layer, "search": search, "test": test,
                                 "test_seconds": time.perf_counter() - t,
                                 "n_test": len(data.harmful_test)})
        atomic_write_text(args.out + ".json", dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
