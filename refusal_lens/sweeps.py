"""Strength sweeps: refusal and capability against the addition coefficient and the ablation
strength, each beside a norm-matched random direction at the same strength.

* Partial ablation (harmful prompts): ``x - alpha (x . u) u`` at every layer and position
  (:func:`refusal_lens.interventions.ablation_hooks` with ``strength=alpha``), ``alpha`` in
  ``[0, 1]``; 1 is the paper's directional ablation.
* Addition (harmless prompts): ``x + c r`` at the direction's layer (its
  ``meta["addition_layer"]`` when selection chose one)
  (:func:`refusal_lens.interventions.addition_hooks` with ``coeff=c``); 1 is the paper's
  activation addition.

Capability at every point: cross-entropy of reference answers to the harmless prompts (the
datasets' answers when given, else the unintervened model's own completions) and the
last-position KL against the unintervened model. Strength 0 is the unintervened model itself
and is measured once (``baseline``), not once per arm.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tqdm.auto import tqdm

from .configs import DEFAULT_ALPHAS, DEFAULT_COEFFICIENTS
from .directions import Direction, random_like
from .evaluation import rate_summary
from .generation import generate
from .interventions import Intervention, ablation, addition
from .scoring import Judge, SubstringJudge, completion_cross_entropy

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["Meter", "check_strengths", "strength_sweep", "sweep_command", "sweep_lines"]

#: Tokens of each harmless reference answer scored by the cross-entropy check.
CE_TOKENS = 64
#: Seed offset of the random control (apart from the evaluation's and the addition sweep's).
RANDOM_SEED_OFFSET = 30_000


def check_strengths(alphas: Sequence[float], coefficients: Sequence[float]) -> None:
    """Raise ``ValueError`` naming the fix unless ``alphas`` lie in [0, 1] and every value is
    finite (called before any model work)."""
    for name, xs in (("alphas", alphas), ("coefficients", coefficients)):
        if any(not isinstance(x, (int, float)) or not math.isfinite(x) for x in xs):
            raise ValueError(f"{name} must be finite numbers, got {list(xs)}.")
    if not alphas and not coefficients:
        raise ValueError("Pass at least one ablation strength or addition coefficient.")
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"Ablation strengths must lie in [0, 1] (1 = full ablation); got {bad}.")


class Meter:
    """Refusal rate of prompts under hooks, and capability (CE of reference answers to the
    harmless prompts, last-position KL vs the unintervened model) under hooks.

    ``hooks`` is a list of :class:`~refusal_lens.execution.Intervention` values (which may run
    on the plain path) and/or TransformerLens ``(name, fn)`` hooks (which run on the bridge).
    The unintervened harmless completions and CE reference are computed once, on creation;
    empty hooks return them without another pass. Shared by every sweep.
    """

    def __init__(self, model: "LensModel", harmless: Sequence[str],
                 reference: Sequence[str] | None = None, judge: Judge | None = None,
                 max_new_tokens: int = 32, batch_size: int = 32, seed: int = 0) -> None:
        if not harmless:
            raise ValueError("Pass a non-empty list of harmless prompts.")
        if reference is not None and len(reference) != len(harmless):
            raise ValueError(f"reference has {len(reference)} answers for {len(harmless)} "
                             "harmless prompts; pass one per prompt (or None for the model's "
                             "own answers).")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.model, self.harmless = model, list(harmless)
        self.judge = judge or SubstringJudge()
        self.max_new_tokens, self.batch_size, self.seed = max_new_tokens, batch_size, seed
        self._harmless_texts = self.generate(self.harmless, [])
        self.text = list(reference) if reference is not None else self._harmless_texts
        self.ce_text = ("dataset reference answers" if reference is not None
                        else "baseline completions")
        self._base = completion_cross_entropy(model, self.harmless, self.text,
                                              batch_size=batch_size,
                                              max_completion_tokens=CE_TOKENS)

    @staticmethod
    def _split(hooks) -> dict[str, list]:
        ivs = [h for h in hooks if isinstance(h, Intervention)]
        return {"interventions": ivs, "fwd_hooks": [h for h in hooks if h not in ivs]}

    def generate(self, prompts: Sequence[str], hooks) -> list[str]:
        return generate(self.model, list(prompts), max_new_tokens=self.max_new_tokens,
                        batch_size=self.batch_size, progress=False, **self._split(hooks))

    def flags(self, prompts: Sequence[str], hooks) -> list[bool]:
        """The judge's refusal flag per prompt under ``hooks``."""
        texts = (self._harmless_texts if not hooks and list(prompts) == self.harmless
                 else self.generate(prompts, hooks))
        return [bool(f) for f in self.judge(list(prompts), texts)]

    def refusal(self, prompts: Sequence[str], hooks) -> dict[str, float]:
        """Refusal rate (95% bootstrap CI) of ``prompts`` under ``hooks``."""
        return rate_summary(self.flags(prompts, hooks), self.seed)

    def capability(self, hooks) -> dict[str, float]:
        """CE of the reference answers and last-position KL under ``hooks``."""
        if not hooks:
            return {"ce": self._base["ce"], "kl": 0.0}
        out = completion_cross_entropy(self.model, self.harmless, self.text,
                                       batch_size=self.batch_size,
                                       reference_last=self._base["last_logits"],
                                       max_completion_tokens=CE_TOKENS, **self._split(hooks))
        return {"ce": out["ce"], "kl": out["kl"]}

    def baseline(self, harmful: Sequence[str]) -> dict[str, Any]:
        """Unintervened refusal on ``harmful`` and the harmless prompts, and the baseline CE."""
        return {"harmful": self.refusal(harmful, []), "harmless": self.refusal(self.harmless, []),
                "ce": self._base["ce"], "kl": 0.0}


def strength_sweep(
    model: "LensModel", direction: Direction, harmful: Sequence[str], harmless: Sequence[str],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    reference: Sequence[str] | None = None, judge: Judge | None = None,
    max_new_tokens: int = 32, batch_size: int = 32, seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Refusal rates (95% CI) and capability along both strength axes for ``direction`` and a
    norm-matched random direction (drawn off the direction's sink basis, seed-dependent).

    Returns ``{"baseline": {...}, "ablation": [rows], "addition": [rows], ...}``; each row
    holds ``strength`` and, for ``"direction"`` and ``"random"``, ``refusal`` (rate summary),
    ``ce`` and ``kl``. Ablation rates are on ``harmful``, addition rates on ``harmless``;
    capability is always on ``harmless`` with ``reference`` (one answer per prompt).
    """
    check_strengths(list(alphas), list(coefficients))
    if not harmful:
        raise ValueError("Pass a non-empty list of harmful prompts.")
    direction.check_width(model)
    harmful = list(harmful)
    rand = random_like(direction.vector, seed=RANDOM_SEED_OFFSET + seed,
                       basis=direction.tensors.get("sink_basis"))
    add_layer = int(direction.meta.get("addition_layer", direction.layer))
    meter = Meter(model, harmless, reference, judge, max_new_tokens, batch_size, seed)
    refusal, capability = meter.refusal, meter.capability
    out: dict[str, Any] = {"baseline": meter.baseline(harmful), "ablation": [], "addition": [],
                           "layer": direction.layer, "position": direction.position,
                           "addition_layer": add_layer,
                           "direction_norm": direction.norm, "random_norm": float(rand.norm()),
                           "seed": seed, "n_harmful": len(harmful), "n_harmless": len(harmless),
                           "max_new_tokens": max_new_tokens, "ce_text": meter.ce_text}
    jobs = [("ablation", a) for a in alphas] + [("addition", c) for c in coefficients]
    for kind, x in tqdm(jobs, desc="strength sweep", disable=not progress):
        row: dict[str, Any] = {"strength": float(x)}
        for name, vec in (("direction", direction.vector), ("random", rand)):
            if kind == "ablation":
                hooks = [ablation(model, vec, strength=x)] if x else []
                row[name] = {"refusal": refusal(harmful, hooks)}
            else:
                hooks = [addition(model, vec, add_layer, coeff=x)] if x else []
                row[name] = {"refusal": refusal(harmless, hooks)}
            row[name] |= capability(hooks)
        out[kind].append(row)
    return out


def sweep_command(a: Any) -> int:
    """The work of ``refusal-lens sweep`` (its options are parsed in :mod:`refusal_lens.cli`):
    check them, run :func:`strength_sweep` on held-out test prompts, write JSON and figure."""
    check_strengths(a.alphas, a.coefficients)
    if a.n < 1 or a.max_new_tokens < 1:
        raise ValueError("--n and --max-new-tokens must be >= 1.")
    stem = Path(a.out)
    if stem.with_suffix(".json").exists() and not a.force:
        raise FileExistsError(f"{stem.with_suffix('.json')} exists; pass --force to replace it.")
    if not Path(a.direction).with_suffix(".safetensors").is_file():
        raise FileNotFoundError(f"No direction file at {a.direction}; save one with "
                                "Direction.save() or run `refusal-lens run` first.")
    from .model import load_model
    from .paths import atomic_write_text
    from .datasets import default_data
    from .figure_files import save_figure
    from .plots_beyond import strength_sweep_figure
    from .selection import dumps

    model = load_model(a.model)
    direction = Direction.load(a.direction, model=model)
    data = default_data(model).evenly_spaced(a.n)
    result = strength_sweep(model, direction, data.harmful_test, data.harmless_test, a.alphas,
                            a.coefficients, data.harmless_reference,
                            max_new_tokens=a.max_new_tokens, seed=a.seed)
    result |= {"model": model.name, "direction_file": str(a.direction), "data": data.name}
    atomic_write_text(stem.with_suffix(".json"), dumps({"seeds": [result]}))
    for path in save_figure(strength_sweep_figure([result], title=(
            f"Strength sweeps, {model.name} (layer {direction.layer}, position "
            f"{direction.position}); {result['n_harmful']} + {result['n_harmless']} held-out "
            f"prompts, {a.max_new_tokens} greedy tokens")), stem):
        print(f"wrote {path}", file=sys.stderr)
    for line in sweep_lines(result):
        print(line)
    return 0


def sweep_lines(result: dict) -> list[str]:
    """One line per strength of a :func:`strength_sweep` result: refusal and CE of the direction
    beside the random one."""
    return [f"{kind:9s} {row['strength']:5.2f}  refusal {d['refusal']['rate']:.2f} (random "
            f"{r['refusal']['rate']:.2f})  CE {d['ce']:.3f} (random {r['ce']:.3f})"
            for kind in ("ablation", "addition") for row in result[kind]
            for d, r in [(row["direction"], row["random"])]]
