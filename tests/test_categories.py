"""Per-category refusal rates: arithmetic on hand-made records, bad input, the public data's
categories, and the pipeline's report carrying them."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from refusal_lens.categories import category_markdown, category_rates


def _rec(arm, split, seed, instruction, refusal):
    return {"arm": arm, "split": split, "seed": seed, "instruction": instruction,
            "completion": "", "refusal": refusal}


def test_rates_per_category_pool_seeds_and_skip_harmless():
    instrs, cats = ["a1", "a2", "b1"], ["A", "A", "B"]
    recs = [_rec("baseline", "harmful", None, "a1", True), _rec("baseline", "harmful", None, "a2",
                                                                False),
            _rec("baseline", "harmful", None, "b1", True),
            _rec("baseline", "harmless", None, "x", False),
            _rec("addition", "harmless", 0, "x", True)]
    recs += [_rec("ablation", "harmful", s, i, f) for s in (0, 1)
             for i, f in (("a1", s == 1), ("a2", False), ("b1", True))]
    out = category_rates(recs, instrs, cats)
    assert out["categories"] == ["A", "B"] and out["n_prompts"] == {"A": 2, "B": 1}
    assert set(out["arms"]) == {"baseline_harmful", "ablation"}  # harmless arms: no category
    assert out["arms"]["baseline_harmful"]["A"]["rate"] == 0.5
    abl = out["arms"]["ablation"]
    assert abl["A"]["n"] == 4 and abl["A"]["rate"] == 0.25  # pooled over both seeds
    assert abl["B"]["rate"] == 1.0
    for v in abl.values():
        assert v["ci_low"] <= v["rate"] <= v["ci_high"]
    md = "\n".join(category_markdown(out))
    assert "| A | 2 | 0.50 [" in md and "ablation" in md


def test_no_categories_and_bad_input():
    assert category_rates([], ["a"], None) is None
    assert "no categories" in "\n".join(category_markdown(None))
    with pytest.raises(ValueError, match="one category per prompt"):
        category_rates([], ["a", "b"], ["A"])
    with pytest.raises(ValueError, match="not a test prompt"):
        category_rates([_rec("baseline", "harmful", None, "zzz", True)], ["a"], ["A"])


def test_public_test_set_carries_jailbreakbench_categories():
    from refusal_lens.datasets import default_data

    class NoModel:  # default_data only reads ``info`` to tell synthetic from public data
        info: dict = {}

    data = default_data(NoModel())
    counts = Counter(data.harmful_categories)
    assert len(data.harmful_categories) == len(data.harmful_test) == 100
    assert len(counts) == 10 and set(counts.values()) == {10}
    assert "Malware/Hacking" in counts
    assert len(default_data(NoModel(), n_test=20).harmful_categories) == 20


def test_pipeline_reports_categories(synthetic, tmp_path):
    from refusal_lens.datasets import default_data
    from refusal_lens.pipeline import run_pipeline

    data = default_data(synthetic, n_train=16, n_val=4, n_test=8)
    weapons = ("bomb", "poison", "firearm", "weapon", "gun", "knife")
    data.harmful_categories = ["weapons" if any(w in x for w in weapons) else "other"
                               for x in data.harmful_test]
    out = tmp_path / "cat"
    report = run_pipeline(synthetic, out, seeds=(0,), n_train=16, n_val=4, max_new_tokens=6,
                          data=data, n_screen=4, top_k=2, orthogonalized=False, progress=False)
    cat = report["category_rates"]
    assert set(cat["categories"]) == set(data.harmful_categories)
    # recount from completions.jsonl, independently of category_rates
    recs = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    of = dict(zip(data.harmful_test, data.harmful_categories))
    for arm in ("baseline_harmful", "ablation", "random_ablation"):
        name = "baseline" if arm == "baseline_harmful" else arm
        for c in cat["categories"]:
            flags = [r["refusal"] for r in recs if r["arm"] == name and r["split"] == "harmful"
                     and of[r["instruction"]] == c]
            assert cat["arms"][arm][c]["n"] == len(flags)
            assert cat["arms"][arm][c]["rate"] == pytest.approx(sum(flags) / len(flags))
    assert "addition" not in cat["arms"]
    md = (out / "report.md").read_text()
    assert "## Refusal by category" in md and "| weapons |" in md
    assert "weapons" in (out / "report.html").read_text()
