"""How selection chooses among scored candidates: the filter tiers and the two rules.

The rules, the induce bar and the fallback tiers are described in :mod:`refusal_lens.selection`;
this module holds them, so a recorded score table can be re-decided without a model
(:func:`choose_from_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .configs import SELECTION_RULES

__all__ = ["SelectionConfig", "CandidateScore", "SelectionError", "STRICT_RULE", "RULES",
           "joint_pick", "induce_bar", "choose", "choose_from_table"]

STRICT_RULE = "strict: finite, layer < {cut}, kl <= {kl:g}, induce > {bar:.3g}; lowest bypass"


#: The selection rules (see the module docstring); the first is the default.
RULES = SELECTION_RULES


class SelectionError(ValueError):
    """Selection cannot proceed (no data, or no finite candidate at all)."""


@dataclass
class SelectionConfig:
    """Knobs of the selection; defaults follow the paper, plus the screening stage."""

    max_layer_frac: float = 0.8
    kl_threshold: float = 0.1
    random_kl_factor: float = 2.0
    n_random: int = 2
    n_screen: int = 6
    top_k: int = 8
    min_kept: int = 4
    batch_size: int = 32
    seed: int = 0
    sink_energy: float = 0.95
    #: candidates ablated together in one batched pass (same results, fewer passes)
    group: int = 8
    #: how the candidate is chosen among those passing the filters: one of :data:`RULES`
    rule: str = SELECTION_RULES[0]
    #: where the chosen vector is added: "read" (its own layer, the paper) or "best" (the layer
    #: of any fully scored candidate where adding it gives the highest induce score on the
    #: validation prompts; recorded as ``Direction.meta["addition_layer"]``)
    addition_layer: str = "read"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise SelectionError(f"Unknown selection rule {self.rule!r}; pick one of {RULES}.")
        if self.addition_layer not in ("read", "best"):
            raise SelectionError(f"addition_layer must be 'read' or 'best', got "
                                 f"{self.addition_layer!r}.")


@dataclass
class CandidateScore:
    layer: int
    position: int
    norm: float
    screen_bypass: float = math.nan
    bypass: float = math.nan
    induce: float = math.nan
    kl: float = math.nan
    scored: bool = False
    #: Why the candidate fails the strict rule (a fallback choice can still have reasons here).
    discarded: list[str] = field(default_factory=list)


def choose_from_table(candidates: Sequence[dict[str, Any]], kl_random: float, n_layers: int,
                      rule: str, config: SelectionConfig | None = None, bar: float = 0.0
                      ) -> dict[str, Any]:
    """What ``rule`` chooses from a recorded candidate table (``SelectionResult.table()``, or a
    run's ``scores.json`` ``candidates``) without rescoring anything: the same filter tiers
    and pick as :func:`select_direction`, with the recorded induce bar ``bar`` (a run's
    ``induce_bar``; 0 for runs that predate it). ``None`` scores count as NaN."""
    if rule not in RULES:
        raise SelectionError(f"Unknown selection rule {rule!r}; pick one of {RULES}.")
    cfg = config or SelectionConfig()
    num = lambda v: math.nan if v is None else float(v)  # noqa: E731
    top = [CandidateScore(int(c["layer"]), int(c["position"]), num(c.get("norm")),
                          num(c.get("screen_bypass")), num(c["bypass"]), num(c["induce"]),
                          num(c["kl"]), True)
           for c in candidates if c.get("scored")]
    if not top:
        raise SelectionError("The table has no fully scored candidate ('scored': true).")
    cut = math.ceil(cfg.max_layer_frac * n_layers)
    chosen, text, fallback, threshold = choose(top, cfg, cut, kl_random, [], rule, record=False,
                                                bar=bar)
    if chosen is None:
        raise SelectionError("No recorded candidate has a finite bypass score.")
    return {"layer": chosen.layer, "position": chosen.position, "rule": text,
            "fallback": fallback, "kl_threshold_used": threshold}


def joint_pick(passing: Sequence[CandidateScore]) -> CandidateScore:
    """The ``joint`` rule's choice: the best worse-of-two rank, bypass ranked ascending and
    induce descending within ``passing`` (rank 1 = best); ties go to the lower bypass."""
    if not passing:
        raise SelectionError("joint_pick needs at least one candidate.")
    by_b = {id(s): 1 + sum(o.bypass < s.bypass for o in passing) for s in passing}
    by_i = {id(s): 1 + sum(o.induce > s.induce for o in passing) for s in passing}
    return min(passing, key=lambda s: (max(by_b[id(s)], by_i[id(s)]), s.bypass))


def induce_bar(harmful_val_metric: float) -> float:
    """The induce filter's bar (module docstring): 0, or the harmful val prompts' own mean
    refusal metric where that is below 0."""
    if not math.isfinite(harmful_val_metric):
        raise SelectionError(f"The harmful val prompts' mean refusal metric is "
                             f"{harmful_val_metric}; check the model's outputs.")
    return min(0.0, float(harmful_val_metric))


def choose(top: list[CandidateScore], cfg: SelectionConfig, cut: int, kl_random: float,
            notes: list[str], rule_name: str = "paper", record: bool = True, bar: float = 0.0
            ) -> tuple[CandidateScore | None, str, bool, float]:
    """Apply the strict filters, then the documented relaxations, recording discard reasons
    (``record``); within the first tier that has candidates, pick by ``rule_name``. ``bar`` is
    the induce filter's (:func:`induce_bar`)."""
    finite = [s for s in top if all(math.isfinite(v) for v in (s.bypass, s.induce, s.kl))]
    for s in (top if record else ()):
        if s not in finite:
            s.discarded.append("NaN score")
        if s.layer >= cut:
            s.discarded.append(f"layer >= {cut}")
        if s in finite and s.kl > cfg.kl_threshold:
            s.discarded.append(f"kl {s.kl:.3g} > {cfg.kl_threshold:g}")
        if s in finite and s.induce <= bar:
            s.discarded.append(f"induce {s.induce:.3g} <= {bar:.3g}")
    finite = [s for s in finite if s.layer < cut]
    relaxed = max(cfg.kl_threshold, cfg.random_kl_factor * kl_random) \
        if math.isfinite(kl_random) else cfg.kl_threshold
    tiers = [
        (STRICT_RULE.format(cut=cut, kl=cfg.kl_threshold, bar=bar), cfg.kl_threshold,
         lambda s: s.kl <= cfg.kl_threshold and s.induce > bar),
        (f"relaxed KL: kl <= max({cfg.kl_threshold:g}, {cfg.random_kl_factor:g} x random-direction "
         f"KL {kl_random:.3g}) = {relaxed:.3g}, induce > {bar:.3g}; lowest bypass", relaxed,
         lambda s: s.kl <= relaxed and s.induce > bar),
        (f"no KL filter: induce > {bar:.3g}; lowest bypass", math.inf,
         lambda s: s.induce > bar),
        ("bypass only: lowest bypass among finite candidates", math.inf, lambda s: True),
    ]
    pick = joint_pick if rule_name == "joint" else (lambda c: min(c, key=lambda s: s.bypass))
    for i, (rule, threshold, ok) in enumerate(tiers):
        passing = [s for s in finite if ok(s)]
        if passing:
            best = pick(passing)
            if rule_name == "joint":
                rule = rule.replace("lowest bypass", "best worse-of-two rank (bypass, induce)")
            if i > 0:
                notes.append(f"all {len(top)} scored candidates failed the strict filters "
                             f"(KL <= {cfg.kl_threshold:g}, induce > {bar:.3g}); chose by "
                             f"fallback rule "
                             f"'{rule}'")
            return best, rule, i > 0, threshold
    return None, "none", True, math.nan
