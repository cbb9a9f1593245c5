"""Multi-direction ablation: harmful refusal and harmless CE with a k-dimensional refusal
subspace ablated (k = 1..4; k = 1 is the selected direction), beside random subspaces of equal
dimension, for each seed's default-rule direction, on held-out test prompts.

The subspace (``refusal_lens.subspace.refusal_subspace``) is fitted on that seed's training
prompts only. Reads the directions ``analyses/selection_rules.py`` saved (``--dirs``). Writes
figures/subspace_ablation.{json,html}; with that JSON present it only re-renders the figure
(``--rerun`` measures again).
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
from refusal_lens.plots_beyond import subspace_figure
from refusal_lens.selection import RULES, dumps, rule_direction_path
from refusal_lens.subspace import refusal_subspace, subspace_sweep

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rule", choices=RULES, default=RULES[0])
    p.add_argument("--dirs", default="runs/selection_rules")
    p.add_argument("--k", type=int, default=4, help="largest subspace dimension")
    p.add_argument("--n-train", type=int, default=32 if FAST else 128)
    p.add_argument("--n-val", type=int, default=8 if FAST else 32)
    p.add_argument("--n", type=int, default=8 if FAST else 50, help="test prompts per side")
    p.add_argument("--tokens", type=int, default=16 if FAST else 32, help="greedy tokens")
    p.add_argument("--out", default="figures/subspace_ablation")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
    res = summary["seeds"]
    fig = subspace_figure(res, title=(
        f"Ablating a k-dimensional refusal subspace<br><sup>{summary['model']}; rule "
        f"'{summary['rule']}' directions; {res[0]['n_harmful']} harmful + {res[0]['n_harmless']}"
        f" harmless held-out test prompts, {res[0]['max_new_tokens']} greedy tokens; 95% CI; "
        "grey: random subspaces of equal dimension</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def measure(args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    data = default_data(model, args.n_train, args.n_val).evenly_spaced(args.n)
    summary = {"model": model.name, "rule": args.rule, "seeds": []}
    for seed in args.seeds:
        t = time.perf_counter()
        d = Direction.load(rule_direction_path(args.dirs, args.rule, seed), model=model)
        fit = data.fit(seed)
        basis, info = refusal_subspace(model, d, fit.harmful_train, fit.harmless_train, args.k)
        res = subspace_sweep(model, basis, data.harmful_test, data.harmless_test,
                             reference=data.harmless_reference, seed=seed,
                             sink_basis=d.tensors.get("sink_basis"),
                             max_new_tokens=args.tokens, batch_size=64, progress=False)
        res |= {"subspace": info, "layer": d.layer, "position": d.position,
                "seconds": time.perf_counter() - t}
        summary["seeds"].append(res)
        for row in res["rows"]:
            s, r = row["subspace"], row["random"]
            print(f"seed {seed} k={row['k']}: refusal {s['refusal']['rate']:.2f} (random "
                  f"{r['refusal']['rate']:.2f}), CE {s['ce']:.3f} (random {r['ce']:.3f})",
                  file=sys.stderr)
        atomic_write_text(args.out + ".json", dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
