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
import math
import sys
from pathlib import Path

import torch

from refusal_lens import analysis_scripts as scripts
from refusal_lens.datasets import default_data, heldout_instructions
from refusal_lens.evaluation import addition_sweep, rate_summary
from refusal_lens.generation import generate
from refusal_lens.plots import addition_sweep_figure
from refusal_lens.scoring import SubstringJudge
from refusal_lens.selection import SelectionConfig, fit_candidates


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/addition_by_layer")
    p.add_argument("--run", default="runs/embedded", metavar="DIR",
                   help="a finished `refusal-lens run` directory of --model")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="layers to add at (default: the 8 below selection's layer cut)")
    scripts.add_count(p, "--n", 16, 100, "held-out development prompts")
    scripts.add_tokens_option(p, 16, 64)
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    return addition_sweep_figure(summary["layers"], summary["selected_layer"],
                                 summary["baseline"]["rate"], title=(
        f"Harmless refusal with the direction added, by layer<br><sup>{summary['model']}, seed "
        f"{summary['seed']} vector at position {summary['position']}; {summary['n_prompts']} "
        f"held-out development prompts, {summary['new_tokens']} greedy tokens; 95% CI</sup>"))


def measure(args: argparse.Namespace) -> dict:
    """Refit the first seed's candidates and measure addition at each layer."""
    run = Path(args.run)
    fix = f"run `refusal-lens run --model {args.model} --out {run}` first, or pass --run."
    report = scripts.read_json(run / "report.json", fix)
    saved = scripts.load_saved_directions({0: run / "direction"}, args.model, fix)[0]
    seeds = report["config"]["seeds"]
    sel = report["selection"][str(seeds[0])]
    m = scripts.Measurement(args.out)
    model = m.load_model(args.model, [saved])
    data = default_data(model, report["data"]["n_train"], report["data"]["n_val"])
    fit = data.fit(seeds[0])
    cfg = SelectionConfig(**{k: v for k, v in report["config"]["selection"].items()
                             if k in SelectionConfig.__dataclass_fields__})
    cut = math.ceil(cfg.max_layer_frac * model.n_layers)  # selection's layer cut
    layers = args.layers or list(range(max(1, cut - 8), cut))
    with m.stage("refit"):
        fitted = fit_candidates(model, fit.harmful_train, fit.harmless_train,
                                report["refusal_tokens"]["ids"], layers, [sel["position"]], cfg)
    vectors = {l: fitted["diffs"][i, 0].float() for i, l in enumerate(layers)}
    if sel["layer"] in vectors and not torch.allclose(vectors[sel["layer"]].double(),
                                                      saved.vector.double(), atol=1e-3):
        raise SystemExit(f"The refitted layer-{sel['layer']} vector differs from the run's "
                         "direction: rerun `refusal-lens run` with this code and data.")
    dev = heldout_instructions([data.fit(s) for s in seeds], args.n, "harmless")
    judge = SubstringJudge()
    with m.stage("baseline"):
        base = rate_summary(judge(dev, generate(model, dev, max_new_tokens=args.max_new_tokens,
                                                batch_size=64, progress=False)))
    with m.stage("addition"):
        rows = addition_sweep(model, vectors, dev, judge, args.max_new_tokens,
                              basis=fitted["basis"])
    for r in rows:
        mark = "  <- selected" if r["layer"] == sel["layer"] else ""
        print(f"layer {r['layer']:>2}  added {r['addition']['rate']:.2f}  random "
              f"{r['random_addition']['rate']:.2f}  |r| {r['norm']:.1f}{mark}")
    print(f"no intervention: {base['rate']:.2f} ({len(dev)} held-out harmless prompts)")
    m.summary |= {"model": report["model"], "seed": seeds[0], "position": sel["position"],
                  "selected_layer": sel["layer"], "n_prompts": len(dev),
                  "new_tokens": args.max_new_tokens, "baseline": base, "layers": rows,
                  "prompts": "held-out development prompts: no test set, no seed's train/val"}
    return m.save()


if __name__ == "__main__":
    sys.exit(main())
