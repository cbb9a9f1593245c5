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
import random
import sys
from pathlib import Path

import torch

from refusal_lens import analysis_scripts as scripts
from refusal_lens.category_directions import (
    category_directions,
    cosine_matrix,
    random_cosines,
    rates_by_category,
)
from refusal_lens.datasets import default_data
from refusal_lens.plots_beyond import categories_figure


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__, "figures/category_directions", seeds=True,
                        rule_dirs=True)
    p.add_argument("--rules-json", default="figures/selection_rules.json", metavar="JSON",
                   help="per-prompt test flags written by analyses/selection_rules.py (the "
                        "refusal per test category is left out if it does not exist)")
    scripts.add_count(p, "--per-category", 8, 32,
              "prompts per category (categories with fewer are skipped)")
    scripts.render_or_measure(p.parse_args(argv), measure, figure)
    return 0


def figure(summary: dict, args: argparse.Namespace):
    first = summary["seeds"][0]
    return categories_figure(first["names"] + ["global"], first["cosines"],
                             summary.get("test_rates"), title=(
        f"Per-category refusal directions<br><sup>{summary['model']}; seed {first['seed']} "
        f"site (layer {first['layer']}, position {first['position']}), {args.per_category} "
        f"prompts per category; random-direction |cos| {first['chance']['mean_abs']:.3f}; "
        "right: JailbreakBench test categories, pooled over seeds, 95% CI</sup>"))


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
    m, model, directions = scripts.rule_measurement(args)
    summary = m.summary
    summary["per_category"] = args.per_category
    data = default_data(model)
    groups = _groups(model, args.per_category)

    def one(seed: int) -> dict:
        d = directions[seed]
        cats = category_directions(model, groups, data.fit(seed).harmless_train, d,
                                   min_prompts=args.per_category)
        cos = cosine_matrix(torch.cat([cats["vectors"], d.vector.double()[None]]))
        print(f"seed {seed}: cos with global " + ", ".join(
            f"{n} {c:.2f}" for n, c in zip(cats["names"], cos[-1, :-1].tolist())),
            file=sys.stderr)
        return {"seed": seed, "layer": d.layer, "position": d.position,
                "names": cats["names"], "counts": cats["counts"], "skipped": cats["skipped"],
                "cosines": cos.tolist(), "chance": random_cosines(d, seed=seed)}

    m.measure_seeds(args.seeds, one)
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
    return m.save()


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
