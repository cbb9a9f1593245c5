"""Fig. 6b: where the top DFA heads attend from the last token (instruction vs suffix span) for
harmful prompts alone / + adversarial suffix / + random suffixes; circuitsvis views of one prompt."""

from __future__ import annotations

import argparse
import json
import os
import sys

from refusal_lens import load_model
from refusal_lens.attention import attention_pattern_html, attention_shift
from refusal_lens.attribution import direct_feature_attribution
from refusal_lens.paths import atomic_write_text
from refusal_lens.plots import attention_shift_figure, save_figure
from refusal_lens.traces import suffix_analysis

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--n", type=int, default=16 if FAST else 100, help="prompts per condition")
    p.add_argument("--k", type=int, default=8, help="number of top DFA heads")
    p.add_argument("--direction", default=None, metavar="PATH",
                   help="a saved direction (default: the direction shipped for --model)")
    p.add_argument("--out", default="figures/attention_shift")
    p.add_argument("--views-only", action="store_true",
                   help="only redraw the circuitsvis views of the heads saved in <out>.json "
                        "(two forward passes, no attribution or attention statistics)")
    args = p.parse_args(argv)
    model = load_model(args.model)
    if args.views_only:
        from refusal_lens.datasets import load_splits
        from refusal_lens.suffixes import shipped_suffix

        heads = [tuple(h) for h in json.loads(open(args.out + ".json").read())["heads"]]
        write_views(model, load_splits(seed=0).harmful_test[0], heads,
                    shipped_suffix(args.model)["suffix"], args.out)
        return 0
    setup = suffix_analysis(model, args.n, direction=args.direction,
                            model_key=args.model)
    heads = direct_feature_attribution(model, setup.harmful, setup.direction).top_heads(args.k)
    shift = attention_shift(model, setup.harmful, heads, setup.adversarial, setup.random_suffixes)
    means = shift.mean_over_heads()
    for cond, spans in means.items():
        print(f"{cond:<30} " + "  ".join(f"{s}: {v:.3f}" for s, v in spans.items()))
    summary = {"heads": heads, "mean_over_heads": means, "per_head": shift.summary(),
               "source": setup.direction_source, "n_prompts": len(setup.harmful)}
    atomic_write_text(args.out + ".json", json.dumps(summary, indent=2) + "\n")
    for path in save_figure(attention_shift_figure(shift), args.out):
        print(f"wrote {path}", file=sys.stderr)
    write_views(model, setup.harmful[0], heads, setup.adversarial, args.out)
    return 0


def write_views(model, example: str, heads, adversarial: str, out: str) -> None:
    """circuitsvis views of ``heads`` on one held-out prompt, without and with the suffix."""
    for tag, suffix in (("no_suffix", None), ("adversarial", adversarial)):
        path = attention_pattern_html(model, example, heads, f"{out}_patterns_{tag}", suffix)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
