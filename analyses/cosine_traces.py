"""Fig. 5: cosine of the last token's residual with the refusal direction, per layer, for harmful
prompts alone / + adversarial suffix / + random suffixes, and harmless prompts."""

from __future__ import annotations

import sys

from refusal_lens import analysis_scripts as scripts
from refusal_lens.plots import cosine_traces_figure
from refusal_lens.traces import cosine_traces


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/cosine_traces", rerun=False)
    scripts.add_suffix_analysis_options(p)
    args = p.parse_args(argv)
    m, model, setup = scripts.suffix_setup(args)
    print(f"direction: layer {setup.direction.layer} ({setup.direction_source})", file=sys.stderr)
    with m.stage("traces"):
        traces = cosine_traces(model, setup.direction, setup.conditions())
    at = traces.at_layer()
    for cond, (mean, sd) in at.items():
        print(f"layer {traces.direction_layer:>2} {cond:<30} cosine {mean:+.3f} ± {sd:.3f}")
    m.summary |= {**traces.to_dict(), "at_direction_layer": at, "source": setup.direction_source}
    m.save()
    scripts.write_figure(cosine_traces_figure(traces), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
