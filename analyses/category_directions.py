"""Per-category refusal directions: one difference in means per training-pool harm category
(prompts in no test set and no organism training set) at each seed's default-rule direction's
site, their cosines with each other and with the global direction (chance level: random
directions), and refusal per JailbreakBench test category under the global direction's ablation
(read from the per-prompt flags ``analyses/selection_rules.py`` wrote, so no test prompt is
generated twice).

Writes figures/category_directions.{json,html}; with that JSON present it only re-renders the
figure (``--rerun`` measures again).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch

from refusal_lens import load_model
from refusal_lens.category_directions import (
    category_directions,
    cosine_matrix,
    random_cosines,
    rates_by_category,
)
from refusal_lens.directions import Direction
from refusal_lens.paths import atomic_write_text
from refusal_lens.datasets import default_data
from refusal_lens.figure_files import save_figure
from refusal_lens.plots_beyond import categories_figure
from refusal_lens.selection import RULES, dumps, rule_direction_path

FAST = os.environ.get("REFUSAL_LENS_FAST") == "1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rule", choices=RULES, default=RULES[0])
    p.add_argument("--dirs", default="runs/selection_rules")
    p.add_argument("--rules-json", default="figures/selection_rules.json",
                   help="per-prompt test flags written by analyses/selection_rules.py")
    p.add_argument("--per-category", type=int, default=8 if FAST else 32,
                   help="prompts per category (categories with fewer are skipped)")
    p.add_argument("--out", default="figures/category_directions")
    p.add_argument("--rerun", action="store_true", help="measure even if the JSON exists")
    args = p.parse_args(argv)
    saved = Path(args.out + ".json")
    summary = (json.loads(saved.read_text()) if saved.is_file() and not args.rerun
               else measure(args))
    first = summary["seeds"][0]
    fig = categories_figure(first["names"] + ["global"], first["cosines"],
                            summary.get("test_rates"), title=(
        f"Per-category refusal directions<br><sup>{summary['model']}; seed {first['seed']} "
        f"site (layer {first['layer']}, position {first['position']}), {args.per_category} "
        f"prompts per category; random-direction |cos| {first['chance']['mean_abs']:.3f}; "
        "right: JailbreakBench test categories, pooled over seeds, 95% CI</sup>"))
    for path in save_figure(fig, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _groups(model, per_category: int) -> dict[str, list[str]]:
    """Training-pool harmful prompts by ``source: category`` (the synthetic model: halves)."""
    syn = getattr(model, "info", {}).get("synthetic")
    if syn is not None:
        pool = syn.harmful[len(syn.harmful) // 4:]
        return {"synthetic A": pool[:per_category], "synthetic B": pool[-per_category:]}
    from refusal_lens.data_sources import load_pools, norm_key
    from refusal_lens.datasets import load_splits

    ref = load_splits(seed=0)
    banned = {norm_key(x) for x in ref.harmful_test + ref.harmful_organism}
    groups: dict[str, list[str]] = {}
    for r in load_pools()[0]:
        if r["category"] != "unspecified" and norm_key(r["instruction"]) not in banned:
            groups.setdefault(f"{r['source']}: {r['category']}", []).append(r["instruction"])
    for name, xs in groups.items():
        random.Random(f"category:{name}").shuffle(xs)
        groups[name] = xs[:per_category]
    return groups


def measure(args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    data = default_data(model)
    groups = _groups(model, args.per_category)
    summary: dict = {"model": model.name, "rule": args.rule, "seeds": [],
                     "per_category": args.per_category}
    for seed in args.seeds:
        d = Direction.load(rule_direction_path(args.dirs, args.rule, seed), model=model)
        cats = category_directions(model, groups, data.fit(seed).harmless_train, d,
                                   min_prompts=args.per_category)
        cos = cosine_matrix(torch.cat([cats["vectors"], d.vector.double()[None]]))
        summary["seeds"].append({"seed": seed, "layer": d.layer, "position": d.position,
                                 "names": cats["names"], "counts": cats["counts"],
                                 "skipped": cats["skipped"], "cosines": cos.tolist(),
                                 "chance": random_cosines(d, seed=seed)})
        print(f"seed {seed}: cos with global " + ", ".join(
            f"{n} {c:.2f}" for n, c in zip(cats["names"], cos[-1, :-1].tolist())),
            file=sys.stderr)
    rules = Path(args.rules_json)
    if rules.is_file():
        res = json.loads(rules.read_text())
        seeds = res["rules"].get(args.rule, {}).get("seeds", [])
        categories = _test_categories(model, res["harmful_test"])
        if seeds and categories:
            pooled = {"baseline": [], "ablation": [], "random_ablation": []}
            cats_all = []
            for s in seeds:
                pooled["baseline"] += res["baseline_flags"]["harmful"]
                pooled["ablation"] += s["flags"]["ablation"]
                pooled["random_ablation"] += s["flags"]["random_ablation"]
                cats_all += categories
            summary["test_rates"] = {a: rates_by_category(f, cats_all) for a, f in pooled.items()}
            summary["test_rates_note"] = (f"{len(seeds)} seed(s) pooled; "
                                          f"{res['new_tokens']} greedy tokens")
    atomic_write_text(args.out + ".json", dumps(summary))
    return summary


def _test_categories(model, harmful_test: list[str]) -> list[str] | None:
    """JailbreakBench categories of the harmful test prompts, in their order (None if the
    prompts are not the public test set)."""
    if getattr(model, "info", {}).get("synthetic") is not None:
        return None
    from refusal_lens.datasets import load_splits

    by_text = {r["instruction"]: r["category"] for r in load_splits(seed=0).records["harmful_test"]}
    cats = [by_text.get(x) for x in harmful_test]
    return None if any(c is None for c in cats) else cats


if __name__ == "__main__":
    sys.exit(main())
