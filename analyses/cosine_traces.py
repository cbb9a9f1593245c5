"""Fig. 5: cosine of the last token's residual with the refusal direction, per layer, for harmful
prompts alone / + adversarial suffix / + random suffixes, and harmless prompts."""

from __future__ import annotations

import argparse
import json
import os
import sys

from refusal_lens import load_model
from refusal_lens.paths import atomic_write_text
from refusal_lens.plots import cosine_traces_figure, save_figure
from refusal_lens.traces import cosine_traces, suffix_analysis

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--n", type=int, default=16 if FAST else 100, help="prompts per condition")
    p.add_argument("--direction", default=None, metavar="PATH",
                   help="a saved direction (default: the direction shipped for --model)")
    p.add_argument("--out", default="figures/cosine_traces")
    args = p.parse_args(argv)
    model = load_model(args.model)
    setup = suffix_analysis(model, args.n, direction=args.direction,
                            model_key=args.model)
    print(f"direction: layer {setup.direction.layer} ({setup.direction_source})", file=sys.stderr)
    traces = cosine_traces(model, setup.direction, setup.conditions())
    at = traces.at_layer()
    for cond, (m, sd) in at.items():
        print(f"layer {traces.direction_layer:>2} {cond:<30} cosine {m:+.3f} ± {sd:.3f}")
    summary = {**traces.to_dict(), "at_direction_layer": at, "source": setup.direction_source}
    atomic_write_text(args.out + ".json", json.dumps(summary, indent=2) + "\n")
    for path in save_figure(cosine_traces_figure(traces), args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
