"""Refusal rates broken down by the harmful test prompts' categories (JailbreakBench's ten).

Every arm that runs on the harmful test prompts (baseline, ablation, orthogonalization and their
random controls) gets one rate per category, pooled over seeds like the main rates, with the
same 95% percentile-bootstrap CI. The addition arms run on the harmless prompts, which carry no
harm category, so they have no row here. With ten prompts per category the intervals are wide:
the table shows where an effect is uneven, not a precise per-category rate.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .evaluation import rate_summary

__all__ = ["category_rates", "category_markdown"]


def category_rates(records: Sequence[dict[str, Any]], instructions: Sequence[str],
                   categories: Sequence[str] | None, boot_seed: int = 0
                   ) -> dict[str, Any] | None:
    """Per-category refusal rates of every harmful-prompt arm.

    ``records``: completion records (``arm``, ``split``, ``instruction``, ``refusal``; as in
    ``completions.jsonl``); ``instructions`` / ``categories``: the harmful test prompts and
    their categories, aligned. Returns ``None`` when ``categories`` is ``None`` (data without
    categories); else ``{"categories": [...], "n_prompts": {category: n}, "arms": {arm key:
    {category: rate_summary}}}`` with the arm keys of the report's ``rates``
    (``baseline_harmful``, ``ablation``, ...).
    """
    if categories is None:
        return None
    if len(categories) != len(instructions):
        raise ValueError(f"Got {len(categories)} categories for {len(instructions)} harmful test "
                         "prompts; pass one category per prompt.")
    cat_of = dict(zip(instructions, categories))
    order = list(dict.fromkeys(categories))
    arms: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        if r["split"] != "harmful":
            continue
        if r["instruction"] not in cat_of:
            raise ValueError(f"A harmful completion's prompt is not a test prompt: "
                             f"{r['instruction'][:60]!r}; pass the records of this test set.")
        key = "baseline_harmful" if r["arm"] == "baseline" else r["arm"]
        arms.setdefault(key, {c: [] for c in order})[cat_of[r["instruction"]]].append(
            bool(r["refusal"]))
    return {"categories": order,
            "n_prompts": {c: sum(x == c for x in categories) for c in order},
            "arms": {a: {c: rate_summary(f, boot_seed) for c, f in by.items()}
                     for a, by in arms.items()}}


def _cell(v: dict[str, float]) -> str:
    if not v["n"] or not math.isfinite(v["rate"]):
        return "n/a"
    return f"{v['rate']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]"


def category_markdown(cat: dict[str, Any] | None) -> list[str]:
    """The per-category table for report.md (categories as rows, arms as columns)."""
    if not cat:
        return ["## Refusal by category", "", "The harmful test prompts carry no categories "
                "(only the public data set, JailbreakBench, has them).", ""]
    arms = list(cat["arms"])
    lines = ["## Refusal by category (harmful test prompts, pooled over seeds, 95% bootstrap CI)",
             "", "| category | n | " + " | ".join(a.replace("_", " ") for a in arms) + " |",
             "|---|---|" + "---|" * len(arms)]
    for c in cat["categories"]:
        lines.append(f"| {c} | {cat['n_prompts'][c]} | "
                     + " | ".join(_cell(cat["arms"][a][c]) for a in arms) + " |")
    return lines + ["", "Addition arms run on the harmless prompts, which have no harm category.",
                    ""]
