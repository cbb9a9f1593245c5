"""Strength sweeps of the default rule's direction, both seeds, on held-out test prompts:
harmful refusal and harmless CE against the partial-ablation strength, harmless refusal and CE
against the addition coefficient, each beside a norm-matched random direction at the same
strength (``refusal_lens.sweeps.strength_sweep``).

Reads the directions ``analyses/selection_rules.py`` saved (``--dirs``,
``direction-<rule>-seed<s>.safetensors``; ``--rule``, by default the rule ``refusal-lens run``
uses). Writes figures/strength_sweep.{json,html}; with that JSON present it only re-renders the
figure (``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.cliargs import add_strength_options
from refusal_lens.datasets import default_data
from refusal_lens.plots_beyond import strength_sweep_figure
from refusal_lens.sweeps import strength_sweep, sweep_lines


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/strength_sweep", seeds=True,
                                rule_dirs=True)
    scripts.add_count(p, "--n", 8, 50, "held-out test prompts per side")
    scripts.add_tokens_option(p, 16, 32)
    add_strength_options(p)
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    res = summary["seeds"]
    if not res:
        raise SystemExit("no seed finished; nothing to plot")
    return strength_sweep_figure(res, title=(
        f"Strength sweeps, rule '{summary['rule']}' directions<br><sup>{summary['model']}; "
        f"{scripts.sweep_caption(res[0])};<br>grey: norm-matched random direction at the "
        "same strength</sup>"))


def measure(args: argparse.Namespace) -> dict:
    m, model, directions = scripts.rule_measurement(args)
    data = default_data(model).evenly_spaced(args.n)

    def one(seed: int) -> dict:
        res = strength_sweep(model, directions[seed], data.harmful_test, data.harmless_test,
                             args.alphas, args.coefficients, data.harmless_reference,
                             max_new_tokens=args.max_new_tokens, batch_size=64, seed=seed,
                             progress=False)
        for line in sweep_lines(res):
            print(f"seed {seed} {line}", file=sys.stderr)
        return res

    return m.measure_seeds(args.seeds, one)


if __name__ == "__main__":
    sys.exit(main())
