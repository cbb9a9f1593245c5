"""Fig. 6a: direct feature attribution of attention heads onto the refusal direction; the top
heads' contributions for harmful prompts alone / + adversarial suffix / + random suffixes."""

from __future__ import annotations

import argparse
import json
import os
import sys

from refusal_lens import load_model
from refusal_lens.attribution import dfa_by_condition, head_table
from refusal_lens.paths import atomic_write_text
from refusal_lens.plots import dfa_heads_figure, save_figure
from refusal_lens.traces import suffix_analysis

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--n", type=int, default=16 if FAST else 100, help="prompts per condition")
    p.add_argument("--k", type=int, default=8, help="number of top heads")
    p.add_argument("--direction", default=None, metavar="PATH",
                   help="a saved direction (default: the direction shipped for --model)")
    p.add_argument("--out", default="figures/dfa_heads")
    args = p.parse_args(argv)
    model = load_model(args.model)
    setup = suffix_analysis(model, args.n, direction=args.direction,
                            model_key=args.model)
    dfas = dfa_by_condition(model, setup.direction, setup.conditions(with_harmless=False))
    errors = {c: d.error() for c, d in dfas.items()}
    heads = dfas["harmful"].top_heads(args.k)  # ranked on harmful prompts without a suffix
    table = head_table(dfas, heads)
    for name, row in table.items():
        print(name, "  ".join(f"{c}: {m:+.3f}±{s:.3f}" for c, (m, s) in row.items()))
    top_sum = {c: float(d.head_values(heads).sum(-1).mean()) for c, d in dfas.items()}
    print("sum over top heads:", {c: round(v, 3) for c, v in top_sum.items()})
    print("max |sum of components - total|:", errors)
    summary = {"layer": setup.direction.layer, "heads": heads, "table": table,
               "top_heads_sum": top_sum, "exactness_error": errors,
               "source": setup.direction_source, "n_prompts": len(setup.harmful)}
    atomic_write_text(args.out + ".json", json.dumps(summary, indent=2) + "\n")
    for path in save_figure(dfa_heads_figure(dfas, heads), args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
