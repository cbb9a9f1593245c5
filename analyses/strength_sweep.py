"""Strength sweeps of the default rule's direction, both seeds, on held-out test prompts:
harmful refusal and harmless CE against the partial-ablation strength, harmless refusal and CE
against the addition coefficient, each beside a norm-matched random direction at the same
strength (``refusal_lens.sweeps.strength_sweep``).

Reads the directions ``analyses/selection_rules.py`` saved (``--dirs``,
``direction-<rule>-seed<s>.safetensors``; ``--rule paper`` by default, the rule
``refusal-lens run`` uses). Writes figures/strength_sweep.{json,html}; with that JSON present it
only re-renders the figure (``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from refusal_lens import load_model
from refusal_lens.directions import Direction
from refusal_lens.paths import atomic_write_text
from refusal_lens.datasets import default_data
from refusal_lens.figure_files import save_figure
from refusal_lens.plots_beyond import strength_sweep_figure
from refusal_lens.selection import RULES, dumps, rule_direction_path
from refusal_lens.configs import DEFAULT_ALPHAS, DEFAULT_COEFFICIENTS
from refusal_lens.sweeps import strength_sweep

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rule", choices=RULES, default=RULES[0])
    p.add_argument("--dirs", default="runs/selection_rules")
    p.add_argument("--n", type=int, default=8 if FAST else 50, help="test prompts per side")
    p.add_argument("--tokens", type=int, default=16 if FAST else 32, help="greedy tokens")
    p.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS))
    p.add_argument("--coefficients", type=float, nargs="+", default=list(DEFAULT_COEFFICIENTS))
    p.add_argument("--out", default="figures/strength_sweep")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
    res = summary["seeds"]
    if not res:
        raise SystemExit("no seed finished; nothing to plot")
    fig = strength_sweep_figure(res, title=(
        f"Strength sweeps, rule '{summary['rule']}' directions<br><sup>{summary['model']}; "
        f"{res[0]['n_harmful']} harmful + {res[0]['n_harmless']} harmless held-out test "
        f"prompts, {res[0]['max_new_tokens']} greedy tokens; 95% CI; grey: norm-matched random "
        "direction at the same strength</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def measure(args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    directions = {s: Direction.load(rule_direction_path(args.dirs, args.rule, s),
                                    model=model) for s in args.seeds}
    data = default_data(model).evenly_spaced(args.n)
    summary = {"model": model.name, "rule": args.rule, "seeds": []}
    for seed, d in directions.items():
        t = time.perf_counter()
        res = strength_sweep(model, d, data.harmful_test, data.harmless_test, args.alphas,
                             args.coefficients, data.harmless_reference,
                             max_new_tokens=args.tokens, batch_size=64, seed=seed,
                             progress=False)
        res["seconds"] = time.perf_counter() - t
        summary["seeds"].append(res)
        for kind in ("ablation", "addition"):
            for row in res[kind]:
                dd, r = row["direction"], row["random"]
                print(f"seed {seed} {kind:9s} {row['strength']:4.2f}: refusal "
                      f"{dd['refusal']['rate']:.2f} (random {r['refusal']['rate']:.2f}), CE "
                      f"{dd['ce']:.3f} (random {r['ce']:.3f})", file=sys.stderr)
        atomic_write_text(args.out + ".json", dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
