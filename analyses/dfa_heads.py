"""Fig. 6a: direct feature attribution of attention heads onto the refusal direction; the top
heads' contributions for harmful prompts alone / + adversarial suffix / + random suffixes."""

from __future__ import annotations

import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.attribution import dfa_by_condition, head_table
from refusal_lens.plots import dfa_heads_figure


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/dfa_heads", rerun=False)
    scripts.add_suffix_analysis_options(p)
    p.add_argument("--k", type=int, default=8, help="number of top heads")
    args = p.parse_args(argv)
    m, model, setup = scripts.suffix_setup(args)
    with m.stage("attribution"):
        dfas = dfa_by_condition(model, setup.direction, setup.conditions(with_harmless=False))
    errors = {c: d.error() for c, d in dfas.items()}
    heads = dfas["harmful"].top_heads(args.k)  # ranked on harmful prompts without a suffix
    table = head_table(dfas, heads)
    for name, row in table.items():
        print(name, "  ".join(f"{c}: {mean:+.3f}±{sd:.3f}" for c, (mean, sd) in row.items()))
    top_sum = {c: float(d.head_values(heads).sum(-1).mean()) for c, d in dfas.items()}
    print("sum over top heads:", {c: round(v, 3) for c, v in top_sum.items()})
    print("max |sum of components - total|:", errors)
    m.summary |= {"layer": setup.direction.layer, "heads": heads, "table": table,
                  "top_heads_sum": top_sum, "exactness_error": errors,
                  "source": setup.direction_source, "n_prompts": len(setup.harmful)}
    m.save()
    scripts.write_figure(dfa_heads_figure(dfas, heads), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
