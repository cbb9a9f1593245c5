"""Addition by layer: harmless refusal when the first seed's candidate vector (the selected
position) is added at each layer, beside a norm-matched random vector, on held-out development
prompts (in no test set, and fitted on by no seed of the run).

Reads the run directory (default ``runs/embedded``) for the seeds, the refusal tokens and the
selection settings; refits that seed's candidates exactly as selection did. Writes
figures/addition_by_layer.{html,json}; with that JSON present it only re-renders the figure
(``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from refusal_lens import load_model
from refusal_lens.directions import Direction
from refusal_lens.evaluation import addition_sweep, rate_summary
from refusal_lens.generation import generate
from refusal_lens.paths import atomic_write_text
from refusal_lens.datasets import default_data, heldout_instructions
from refusal_lens.plots import addition_sweep_figure, save_figure
from refusal_lens.scoring import SubstringJudge
from refusal_lens.selection import SelectionConfig, dumps, fit_candidates

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--run", default="runs/embedded", help="a finished `refusal-lens run` dir")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="layers to add at (default: the 8 below the 0.8 L cut)")
    p.add_argument("--n", type=int, default=16 if FAST else 100, help="development prompts")
    p.add_argument("--tokens", type=int, default=16 if FAST else 64, help="new tokens")
    p.add_argument("--out", default="figures/addition_by_layer")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
    fig = addition_sweep_figure(summary["layers"], summary["selected_layer"],
                                summary["baseline"]["rate"], title=(
        f"Harmless refusal with the direction added, by layer<br><sup>{summary['model']}, seed "
        f"{summary['seed']} vector at position {summary['position']}; {summary['n_prompts']} "
        f"held-out development prompts, {summary['new_tokens']} greedy tokens; 95% CI</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def measure(args: argparse.Namespace) -> dict:
    """Refit the first seed's candidates and measure addition at each layer."""
    report = json.loads((Path(args.run) / "report.json").read_text())
    seeds = report["config"]["seeds"]
    sel = report["selection"][str(seeds[0])]
    model = load_model(args.model)
    data = default_data(model, report["data"]["n_train"], report["data"]["n_val"])
    fit = data.fit(seeds[0])
    cfg = SelectionConfig(**{k: v for k, v in report["config"]["selection"].items()
                             if k in SelectionConfig.__dataclass_fields__})
    cut = math.ceil(cfg.max_layer_frac * model.n_layers)  # selection's layer cut
    layers = args.layers or list(range(max(1, cut - 8), cut))
    fitted = fit_candidates(model, fit.harmful_train, fit.harmless_train,
                            report["refusal_tokens"]["ids"], layers, [sel["position"]], cfg)
    vectors = {l: fitted["diffs"][i, 0].float() for i, l in enumerate(layers)}
    if sel["layer"] in vectors:  # the refit reproduces the run's direction
        saved = Direction.load(Path(args.run) / "direction.safetensors", model=model).vector
        if not torch.allclose(vectors[sel["layer"]].double(), saved.double(), atol=1e-3):
            raise SystemExit(f"The refitted layer-{sel['layer']} vector differs from the run's "
                             "direction: rerun `refusal-lens run` with this code and data.")
    dev = heldout_instructions([data.fit(s) for s in seeds], args.n, "harmless")
    judge = SubstringJudge()
    base = rate_summary(judge(dev, generate(model, dev, max_new_tokens=args.tokens,
                                            batch_size=64, progress=False)))
    rows = addition_sweep(model, vectors, dev, judge, args.tokens, basis=fitted["basis"])
    for r in rows:
        mark = "  <- selected" if r["layer"] == sel["layer"] else ""
        print(f"layer {r['layer']:>2}  added {r['addition']['rate']:.2f}  random "
              f"{r['random_addition']['rate']:.2f}  |r| {r['norm']:.1f}{mark}")
    print(f"no intervention: {base['rate']:.2f} ({len(dev)} held-out harmless prompts)")
    summary = {"model": report["model"], "seed": seeds[0], "position": sel["position"],
               "selected_layer": sel["layer"], "n_prompts": len(dev), "new_tokens": args.tokens,
               "baseline": base, "layers": rows,
               "prompts": "held-out development prompts: no test set, no seed's train/val"}
    atomic_write_text(args.out + ".json", dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
