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
import json
import sys
import time
from pathlib import Path

import torch

from refusal_lens import load_model
from refusal_lens.datasets import default_data
from refusal_lens.direction_comparison import chance_cosine, layer_cosines, layer_mean_diffs
from refusal_lens.directions import Direction
from refusal_lens.figure_files import save_figure
from refusal_lens.paths import atomic_write_text
from refusal_lens.plots_beyond import direction_comparison_figure
from refusal_lens.selection import dumps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", metavar="SPEC=DIR",
                   default=["embedded=runs/embedded", "qwen2.5-coder-0.5b-instruct=runs/qwen"],
                   help="finished two-seed runs to compare (model spec = run directory)")
    p.add_argument("--base", default="embedded-base", help="the organism's base model spec")
    p.add_argument("--organism", default="embedded", help="the fine-tuned model's spec")
    p.add_argument("--out", default="figures/compare_directions")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
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
    fig = direction_comparison_figure(panels, title=(
        "Refusal directions compared<br><sup>unfiltered differences in means at the chosen "
        "position, training prompts only; grey: chance</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_directions(run: Path) -> list[Direction]:
    out = [Direction.load(run / "direction")]
    out += [Direction.load(p) for p in sorted(run.glob("direction-seed*.safetensors"))]
    if len(out) < 2:
        raise SystemExit(f"{run} holds one seed's direction; compare needs a two-seed run.")
    return out[:2]


def measure(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    summary: dict = {"seeds": {}, "timing": {}}
    for item in args.runs:
        spec, _, run = item.partition("=")
        d0, d1 = _run_directions(Path(run))
        t = time.perf_counter()
        model = load_model(spec)
        data = default_data(model)
        diffs = [layer_mean_diffs(model, f.harmful_train, f.harmless_train, d0.position)
                 for f in (data.fit(d0.seed), data.fit(d1.seed))]
        cos = layer_cosines(*diffs)
        summary["seeds"][spec] = {
            "model": model.name, "seeds": [d0.seed, d1.seed], "position": d0.position,
            "layers": [d0.layer, d1.layer], "layer_cosines": cos.tolist(),
            "chosen_cosine": float(torch.nn.functional.cosine_similarity(
                d0.vector.double(), d1.vector.double(), dim=0)),
            "chance": chance_cosine(model.d_model)}
        summary["timing"][f"{spec}_s"] = time.perf_counter() - t
        if spec == args.organism:
            t = time.perf_counter()
            base = load_model(args.base)
            fit = data.fit(d0.seed)
            base_diffs = layer_mean_diffs(base, fit.harmful_train, fit.harmless_train,
                                          d0.position)
            summary["base"] = {
                "base": base.name, "organism": model.name, "layer": d0.layer,
                "layer_cosines": layer_cosines(base_diffs, diffs[0]).tolist(),
                "base_vs_chosen": float(torch.nn.functional.cosine_similarity(
                    base_diffs[d0.layer], d0.vector.double(), dim=0)),
                "chance": summary["seeds"][spec]["chance"]}  # same width, same chance
            summary["timing"]["base_s"] = time.perf_counter() - t
            del base
        del model
    summary["timing"]["total_s"] = time.perf_counter() - t0
    atomic_write_text(args.out + ".json", dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
