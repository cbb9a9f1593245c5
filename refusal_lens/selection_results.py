"""What selection returns and writes: :class:`SelectionResult`, and strict JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .directions import Direction
from .selection_rules import CandidateScore, SelectionError

__all__ = ["SelectionResult", "rule_direction_path", "jsonable", "dumps"]


def rule_direction_path(folder: str | Path, rule: str, seed: int) -> Path:
    """Where a direction chosen by ``rule`` for ``seed`` is saved in ``folder`` (without the
    ``.safetensors`` suffix): written by ``analyses/selection_rules.py``, read by the analyses
    that build on it."""
    return Path(folder) / f"direction-{rule}-seed{seed}"


@dataclass
class SelectionResult:
    """The chosen direction, every candidate's scores, and how the choice was made."""

    direction: Direction
    scores: list[CandidateScore]
    rule: str
    fallback: bool
    notes: list[str]
    refusal_token_ids: list[int]
    kl_random: float
    kl_threshold_used: float
    filtering: dict[str, Any]
    baseline: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)
    #: every layer's candidate vector at the chosen position (for the per-layer logit lens)
    layer_vectors: dict[int, Tensor] = field(default_factory=dict, repr=False)
    #: rule name -> what that rule chooses from the same scores (layer, position, rule text)
    by_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the fully scored candidates' vectors (what :meth:`direction_for` builds from)
    vectors: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)
    #: the induce filter's bar: min(0, harmful val prompts' mean refusal metric)
    induce_bar: float = 0.0

    def direction_for(self, rule: str) -> Direction:
        """The direction ``rule`` chooses from these scores (the chosen one for its own rule)."""
        if rule not in self.by_rule:
            raise SelectionError(f"No choice recorded for rule {rule!r}; recorded: "
                                 f"{sorted(self.by_rule)}.")
        pick = self.by_rule[rule]
        key = (pick["layer"], pick["position"])
        if key == (self.direction.layer, self.direction.position):
            return self.direction
        s = next(c for c in self.scores if (c.layer, c.position) == key)
        d = self.direction
        return Direction(self.vectors[key].clone(), s.layer, s.position, model=d.model,
                         dataset_hash=d.dataset_hash, seed=d.seed,
                         meta={**{k: v for k, v in d.meta.items()
                                  if k not in ("addition_layer", "addition_induce")},
                               "bypass": s.bypass, "induce": s.induce, "kl": s.kl,
                               "rule": pick["rule"], "fallback": pick["fallback"],
                               "selection_rule": rule},
                         tensors={k: v for k, v in d.tensors.items() if k != "mean_diff"})

    @property
    def chosen(self) -> CandidateScore:
        return next(s for s in self.scores
                    if s.layer == self.direction.layer and s.position == self.direction.position)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.scores]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.direction.layer, "position": self.direction.position,
                "rule": self.rule, "fallback": self.fallback, "notes": self.notes,
                "refusal_token_ids": self.refusal_token_ids, "kl_random": self.kl_random,
                "kl_threshold_used": self.kl_threshold_used, "filtering": self.filtering,
                "baseline": self.baseline, "timing": self.timing, "sink": self.sink,
                "chosen": asdict(self.chosen), "by_rule": self.by_rule,
                "induce_bar": self.induce_bar,
                "selection_rule": self.direction.meta.get("selection_rule"),
                "candidates": self.table()}

    def to_csv(self) -> str:
        cols = ["layer", "position", "norm", "screen_bypass", "bypass", "induce", "kl", "scored",
                "discarded"]
        lines = [",".join(cols)]
        for s in self.scores:
            d = asdict(s)
            d["discarded"] = ";".join(s.discarded)
            lines.append(",".join(_fmt(d[c]) for c in cols))
        return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def jsonable(x: Any) -> Any:
    """``x`` with non-finite floats as ``None`` and tensors as lists (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return jsonable(x.tolist())
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def dumps(x: Any) -> str:
    """Strict JSON text (NaN/inf become null)."""
    return json.dumps(jsonable(x), indent=2, allow_nan=False) + "\n"
