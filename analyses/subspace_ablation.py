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
import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.datasets import default_data
from refusal_lens.plots_beyond import subspace_figure
from refusal_lens.subspace import refusal_subspace, subspace_sweep


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/subspace_ablation", seeds=True,
                        rule_dirs=True)
    p.add_argument("--k", type=int, default=4, help="largest subspace dimension")
    scripts.add_fit_counts(p)
    scripts.add_count(p, "--n", 8, 50, "held-out test prompts per side")
    scripts.add_tokens_option(p, 16, 32)
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    res = summary["seeds"]
    return subspace_figure(res, title=(
        f"Ablating a k-dimensional refusal subspace<br><sup>{summary['model']}; rule "
        f"'{summary['rule']}' directions; {scripts.sweep_caption(res[0])};<br>grey: random "
        "subspaces of equal dimension</sup>"))


def measure(args: argparse.Namespace) -> dict:
    m, model, directions = scripts.rule_measurement(args)
    data = default_data(model, args.n_train, args.n_val).evenly_spaced(args.n)

    def one(seed: int) -> dict:
        d, fit = directions[seed], data.fit(seed)
        basis, info = refusal_subspace(model, d, fit.harmful_train, fit.harmless_train, args.k)
        res = subspace_sweep(model, basis, data.harmful_test, data.harmless_test,
                             reference=data.harmless_reference, seed=seed,
                             sink_basis=d.tensors.get("sink_basis"),
                             max_new_tokens=args.max_new_tokens, batch_size=64, progress=False)
        res |= {"subspace": info, "layer": d.layer, "position": d.position}
        for row in res["rows"]:
            s, r = row["subspace"], row["random"]
            print(f"seed {seed} k={row['k']}: refusal {s['refusal']['rate']:.2f} (random "
                  f"{r['refusal']['rate']:.2f}), CE {s['ce']:.3f} (random {r['ce']:.3f})",
                  file=sys.stderr)
        return res

    return m.measure_seeds(args.seeds, one)


if __name__ == "__main__":
    sys.exit(main())
