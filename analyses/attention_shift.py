"""Fig. 6b: where the top DFA heads attend from the last token (instruction vs suffix span) for
harmful prompts alone / + adversarial suffix / + random suffixes; circuitsvis views of one prompt."""

from __future__ import annotations

import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.attention import attention_pattern_html, attention_shift
from refusal_lens.attribution import direct_feature_attribution
from refusal_lens.plots import attention_shift_figure


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/attention_shift", rerun=False)
    scripts.add_suffix_analysis_options(p)
    p.add_argument("--k", type=int, default=8, help="number of top DFA heads")
    p.add_argument("--views-only", action="store_true",
                   help="only redraw the circuitsvis views of the heads saved in STEM.json "
                        "(two forward passes, no attribution or attention statistics)")
    args = p.parse_args(argv)
    if args.views_only:
        from refusal_lens.datasets import load_splits
        from refusal_lens.suffixes import shipped_suffix

        saved = scripts.read_json(args.out + ".json", "run without --views-only first")
        heads = [tuple(h) for h in saved["heads"]]
        suffix = shipped_suffix(args.model)["suffix"]
        model = scripts.load_model_for(args.model)
        write_views(model, load_splits(seed=0).harmful_test[0], heads, suffix, args.out)
        return 0
    m, model, setup = scripts.suffix_setup(args)
    with m.stage("attribution"):
        heads = direct_feature_attribution(model, setup.harmful,
                                           setup.direction).top_heads(args.k)
    with m.stage("attention"):
        shift = attention_shift(model, setup.harmful, heads, setup.adversarial,
                                setup.random_suffixes)
    means = shift.mean_over_heads()
    for cond, spans in means.items():
        print(f"{cond:<30} " + "  ".join(f"{s}: {v:.3f}" for s, v in spans.items()))
    m.summary |= {"heads": heads, "mean_over_heads": means, "per_head": shift.summary(),
                  "source": setup.direction_source, "n_prompts": len(setup.harmful)}
    m.save()
    scripts.write_figure(attention_shift_figure(shift), args.out)
    write_views(model, setup.harmful[0], heads, setup.adversarial, args.out)
    return 0


def write_views(model, example: str, heads, adversarial: str, out: str) -> None:
    """circuitsvis views of ``heads`` on one held-out prompt, without and with the suffix."""
    for tag, suffix in (("no_suffix", None), ("adversarial", adversarial)):
        path = attention_pattern_html(model, example, heads, f"{out}_patterns_{tag}", suffix)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
