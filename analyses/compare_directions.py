"""Compare refusal directions: between seeds of each shipped model, and between the organism
and its base model (does the organism's direction exist before fine-tuning?).

Reads finished `refusal-lens run` directories (``--runs SPEC=DIR``: both seeds' chosen
directions). For each model, the unfiltered difference in means at seed 0's chosen position is
fitted at every layer on each seed's own training prompts, and the two seeds' are compared layer
by layer; the chosen directions' own cosine is marked. For the organism, the same per-layer
differences are fitted on seed 0's training prompts in ``embedded-base`` (SmolLM2 before the
refusal fine-tune) and in ``embedded``, and compared layer by layer; the base model's vector at
the chosen layer is also compared with the organism's chosen direction. Training prompts only:
no test prompt is used. Chance = 99th percentile of |cos| between random directions. Writes
figures/compare_directions.{json,html}; with that JSON present it only re-renders the figure
(``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from refusal_lens import analysis_scripts as scripts
from refusal_lens.datasets import default_data
from refusal_lens.direction_comparison import chance_cosine, layer_cosines, layer_mean_diffs
from refusal_lens.directions import Direction
from refusal_lens.plots_beyond import direction_comparison_figure


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/compare_directions", model=False)
    p.add_argument("--runs", nargs="+", metavar="SPEC=DIR",
                   default=["embedded=runs/embedded", "qwen2.5-coder-0.5b-instruct=runs/qwen"],
                   help="finished two-seed runs to compare (model spec = run directory)")
    p.add_argument("--base", default="embedded-base", metavar="SPEC",
                   help="the organism's base model spec")
    p.add_argument("--organism", default="embedded", metavar="SPEC",
                   help="the fine-tuned model's spec")
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    panels = {}
    for spec, m in summary["seeds"].items():
        panels[f"{m['model']}: seed 0 vs seed 1"] = {
            "series": {f"{spec}: per-layer difference in means": m["layer_cosines"]},
            "chance": m["chance"],
            "points": {f"chosen (L{m['layers'][0]} vs L{m['layers'][1]})":
                       (m["layers"][0], m["chosen_cosine"])}}
    b = summary.get("base")
    if b:
        panels[f"{b['base']} vs {b['organism']} (same prompts)"] = {
            "series": {"per-layer difference in means": b["layer_cosines"]},
            "chance": b["chance"],
            "points": {f"base vs chosen (L{b['layer']})": (b["layer"], b["base_vs_chosen"])}}
    return direction_comparison_figure(panels, title=(
        "Refusal directions compared<br><sup>unfiltered differences in means at the chosen "
        "position, training prompts only; grey: chance</sup>"))


def _run_directions(spec: str, run: Path) -> list[Direction]:
    """The first two seeds' chosen directions of the two-seed run of ``spec`` in ``run``,
    checked before any model loads."""
    paths = [run / "direction", *sorted(run.glob("direction-seed*.safetensors"))][:2]
    fix = (f"pass --runs {spec}=DIR, a finished `refusal-lens run --model {spec} --seeds 0 1` "
           "directory.")
    out = list(scripts.load_saved_directions(dict(enumerate(paths)), spec, fix).values())
    if len(out) < 2:
        raise SystemExit(f"{run} holds one seed's direction; compare needs a two-seed run.")
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def measure(args: argparse.Namespace) -> dict:
    runs = {spec: _run_directions(spec, Path(run))
            for spec, _, run in (item.partition("=") for item in args.runs)}
    m = scripts.Measurement(args.out, seeds={})
    for spec, (d0, d1) in runs.items():
        with m.stage(spec):
            model = scripts.load_model_for(spec, (d0, d1))
            data = default_data(model)
            diffs = [layer_mean_diffs(model, f.harmful_train, f.harmless_train, d0.position)
                     for f in (data.fit(d0.seed), data.fit(d1.seed))]
            m.summary["seeds"][spec] = {
                "model": model.name, "seeds": [d0.seed, d1.seed], "position": d0.position,
                "layers": [d0.layer, d1.layer], "layer_cosines": layer_cosines(*diffs).tolist(),
                "chosen_cosine": _cosine(d0.vector, d1.vector),
                "chance": chance_cosine(model.d_model)}
        if spec == args.organism:
            with m.stage("base"):
                base = scripts.load_model_for(args.base)
                fit = data.fit(d0.seed)
                base_diffs = layer_mean_diffs(base, fit.harmful_train, fit.harmless_train,
                                              d0.position)
                m.summary["base"] = {
                    "base": base.name, "organism": model.name, "layer": d0.layer,
                    "layer_cosines": layer_cosines(base_diffs, diffs[0]).tolist(),
                    "base_vs_chosen": _cosine(base_diffs[d0.layer], d0.vector),
                    "chance": m.summary["seeds"][spec]["chance"]}  # same width, same chance
            del base
        del model
    return m.save()


if __name__ == "__main__":
    sys.exit(main())
