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
import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.datasets import default_data
from refusal_lens.directions import random_like
from refusal_lens.export import export_hf
from refusal_lens.interventions import ablation
from refusal_lens.optimized_ablation import (
    LayerWeights,
    search_weights,
    weighted_hooks,
    weighted_orthogonalize,
)
from refusal_lens.plots_beyond import pareto_figure
from refusal_lens.sweeps import Meter


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/optimized_ablation", seeds=True,
                        rule_dirs=True)
    scripts.add_count(p, "--trials", 6, 40, "search trials per seed")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds per seed's search (stops early; the trial count is recorded)")
    p.add_argument("--separate", action="store_true",
                   help="separate kernels for attention and MLP writes")
    p.add_argument("--val-tokens", type=int, default=16, metavar="N",
                   help="greedy tokens in the search")
    scripts.add_fit_counts(p)
    scripts.add_count(p, "--n", 8, 50, "held-out test prompts per side")
    scripts.add_tokens_option(p, 16, 32, "greedy tokens per completion on the test prompts")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write the first seed's chosen point as orthogonalized weights "
                        "(a Hugging Face directory; the per-layer weights in refusal_lens.json)")
    args = p.parse_args(argv)
    summary = scripts.render_or_measure(args, measure, figure)
    if args.export:
        first = summary["seeds"][0]
        d = scripts.rule_directions(args.model, args.dirs, summary["rule"], [first["seed"]])
        model = scripts.load_model_for(args.model, d.values())
        edited = weighted_orthogonalize(model, d[first["seed"]], _weights(first))
        print(f"wrote {export_hf(edited, args.export)}", file=sys.stderr)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    res = summary["seeds"]
    return pareto_figure([r["search"] for r in res], title=(
        f"Optimised ablation (kernel weights, multi-objective TPE)<br><sup>{summary['model']}; "
        f"searched on {res[0]['search']['n_harmful_val']}"
        f" + {res[0]['search']['n_harmless_val']} validation prompts, "
        f"{res[0]['search']['max_new_tokens']} greedy tokens</sup>"))


def _weights(seed_result: dict) -> LayerWeights:
    return LayerWeights(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in seed_result["search"]["chosen"]["weights"].items()})


def measure(args: argparse.Namespace) -> dict:
    m, model, directions = scripts.rule_measurement(args)
    data = default_data(model, args.n_train, args.n_val).evenly_spaced(args.n)

    def one(seed: int) -> dict:
        d, fit = directions[seed], data.fit(seed)
        rand = random_like(d.vector, seed=10_000 + seed, basis=d.tensors.get("sink_basis"))
        with m.stage(f"search_seed{seed}"):
            search = search_weights(model, d, fit.harmful_val, fit.harmless_val, args.trials,
                                    seed, args.separate, args.val_tokens,
                                    timeout_s=args.timeout, random_vector=rand)
        with m.stage(f"test_seed{seed}"):
            meter = Meter(model, data.harmless_test, data.harmless_reference,
                          max_new_tokens=args.max_new_tokens, batch_size=64, seed=seed)
            chosen = _weights({"search": search})
            test = {"baseline": meter.baseline(data.harmful_test)}
            for name, hooks in (("chosen", weighted_hooks(model, d, chosen)),
                                ("single_direction", [ablation(model, d)]),
                                ("random", [ablation(model, rand)])):
                test[name] = {"refusal": meter.refusal(data.harmful_test, hooks)} | \
                    meter.capability(hooks)
                print(f"seed {seed} {name}: refusal {test[name]['refusal']['rate']:.2f}, KL "
                      f"{test[name]['kl']:.3f}, CE {test[name]['ce']:.3f}", file=sys.stderr)
        return {"seed": seed, "layer": d.layer, "search": search, "test": test,
                "n_test": len(data.harmful_test)}

    return m.measure_seeds(args.seeds, one)


if __name__ == "__main__":
    sys.exit(main())
