"""Optimised ablation: per-layer ablation weights from a small parametric kernel, searched with
Optuna's multi-objective TPE for few refusals at little KL (the approach of p-e-w/heretic).

Weighted ablation removes a fraction ``w`` of the direction from what each residual-stream
writer writes: ``W <- W - w u u^T W`` for the token embedding, each attention output and each
MLP output projection (``w = 1`` everywhere is the paper's weight orthogonalization, which equals
directional ablation). With hooks it is ``x - w (x . u) u`` on ``hook_embed`` and each block's
``hook_attn_out`` / ``hook_mlp_out``; both are provided and tested equal.

The weights come from a :class:`Kernel` over layers: ``w_max`` at layer ``peak``, falling
linearly to ``w_min`` at distance ``width``, 0 beyond; attention and MLP writers may have
separate kernels. The embedding counts as layer 0's first writer (the attention kernel's
layer-0 weight). The search runs on validation prompts only: refusals (judge on greedy
completions of harmful prompts) and mean last-position KL on harmless prompts, both minimised.
The uniform kernel (every weight 1, single-direction ablation) is enqueued as the first trial,
so the front is compared against it under the same measurement.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from .directions import Direction, unit_vector
from .generation import generate
from .interventions import HookList, VectorLike, _as_vector
from .orthogonalize import _project_out_weights, orthogonalize, residual_writers
from .hf_modules import bridges_removed
from .execution import Intervention, last_logits
from .scoring import Judge, SubstringJudge, last_position_kl

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["Kernel", "LayerWeights", "weighted_hooks", "WeightedModel", "weighted_orthogonalize",
           "search_weights", "choose_point", "W_MAX"]

#: Largest allowed weight (above 1 the component is over-removed, as heretic allows).
W_MAX = 1.5


@dataclass(frozen=True)
class Kernel:
    """``w_max`` at layer ``peak``, linear down to ``w_min`` at distance ``width``, 0 beyond."""

    peak: float
    width: float
    w_max: float
    w_min: float

    def __post_init__(self) -> None:
        vals = (self.peak, self.width, self.w_max, self.w_min)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise ValueError(f"Kernel parameters must be finite numbers, got {vals}.")
        if self.width < 0:
            raise ValueError(f"width must be >= 0 (layers), got {self.width}.")
        for name in ("w_max", "w_min"):
            if not 0.0 <= getattr(self, name) <= W_MAX:
                raise ValueError(f"{name} must lie in [0, {W_MAX}], got {getattr(self, name)}.")

    def weights(self, n_layers: int) -> list[float]:
        out = []
        for layer in range(n_layers):
            d = abs(layer - self.peak)
            if d > self.width:
                out.append(0.0)
            else:
                frac = d / self.width if self.width > 0 else 0.0
                out.append(self.w_max + (self.w_min - self.w_max) * frac)
        return out


@dataclass(frozen=True)
class LayerWeights:
    """Ablation weight of the embedding and of each layer's attention and MLP output."""

    embed: float
    attn: tuple[float, ...]
    mlp: tuple[float, ...]

    @classmethod
    def from_kernels(cls, n_layers: int, attn: Kernel, mlp: Kernel | None = None
                     ) -> "LayerWeights":
        a = attn.weights(n_layers)
        return cls(a[0], tuple(a), tuple((mlp or attn).weights(n_layers)))

    @classmethod
    def uniform(cls, n_layers: int, w: float = 1.0) -> "LayerWeights":
        return cls(w, (w,) * n_layers, (w,) * n_layers)

    def check(self, n_layers: int) -> None:
        if len(self.attn) != n_layers or len(self.mlp) != n_layers:
            raise ValueError(f"Need {n_layers} attention and MLP weights, got "
                             f"{len(self.attn)} and {len(self.mlp)}.")
        for w in (self.embed, *self.attn, *self.mlp):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and 0 <= w <= W_MAX):
                raise ValueError(f"Weights must lie in [0, {W_MAX}], got {w!r}.")


def _project(x: Tensor, unit: Tensor, w: float) -> Tensor:
    u = unit.to(device=x.device, dtype=x.dtype)
    return x - w * (x @ u).unsqueeze(-1) * u


def weighted_hooks(model: "LensModel", direction: VectorLike, weights: LayerWeights
                   ) -> HookList:
    """Hooks removing ``w`` of the direction from each writer's output (zero weights skipped).
    They run through the TransformerLens bridge (writer outputs are not plain-path points)."""
    weights.check(model.n_layers)
    unit = unit_vector(_as_vector(direction, model)).float()

    def make(w: float):
        def hook_fn(x: Tensor, hook=None) -> Tensor:
            return _project(x, unit, w)
        return hook_fn

    sites = [("hook_embed", weights.embed)]
    sites += [(f"blocks.{l}.hook_attn_out", w) for l, w in enumerate(weights.attn)]
    sites += [(f"blocks.{l}.hook_mlp_out", w) for l, w in enumerate(weights.mlp)]
    missing = [n for n, _ in sites if n not in model.bridge.hook_dict]
    if missing:
        raise NotImplementedError(f"The bridge has no hook points {missing[:3]}...; use "
                                  "weighted_orthogonalize instead.")
    return [(name, make(w)) for name, w in sites if w]


def _writer_weights(names: Sequence[str], weights: LayerWeights) -> dict[str, float]:
    """Writer module name -> weight; the embeddings come first, then (attn, MLP) per layer."""
    n_embed = len(names) - 2 * len(weights.attn)
    if n_embed < 1:
        raise NotImplementedError(f"Cannot map {len(names)} writers onto "
                                  f"{len(weights.attn)} layers.")
    out = {n: weights.embed for n in names[:n_embed]}
    for l in range(len(weights.attn)):
        out[names[n_embed + 2 * l]] = weights.attn[l]
        out[names[n_embed + 2 * l + 1]] = weights.mlp[l]
    return out


class WeightedModel:
    """One editable copy of ``model`` (its plain Hugging Face weights, wrapped): ``apply``
    restores the original writer weights and removes ``weights`` of the direction from them, in
    place, so a search edits one copy instead of building a model per trial."""

    def __init__(self, model: "LensModel", direction: VectorLike) -> None:
        vec = _as_vector(direction, model).double()
        self.unit64 = (vec / vec.norm()).cpu()
        self.n_layers = model.n_layers
        self.model = orthogonalize(model, direction, writers=[])  # an unedited copy
        with bridges_removed(self.model.hf_model) as hf:
            self.names = residual_writers(hf)
            mods = dict(hf.named_modules())
        self.modules = {n: mods[n] for n in self.names}
        self.original = {n: {k: p.detach().clone() for k, p in m.named_parameters(recurse=False)}
                         for n, m in self.modules.items()}
        self.weights: LayerWeights | None = None

    @torch.no_grad()
    def apply(self, weights: LayerWeights) -> "LensModel":
        weights.check(self.n_layers)
        for name, w in _writer_weights(self.names, weights).items():
            module = self.modules[name]
            for k, p in module.named_parameters(recurse=False):
                p.copy_(self.original[name][k])
            if w:
                _project_out_weights(module, self.unit64 * math.sqrt(w))
        self.weights = weights
        entry = dict(self.model.info["orthogonalized"][-1])
        entry["layer_weights"] = asdict(weights)
        self.model.info["orthogonalized"] = [*self.model.info["orthogonalized"][:-1], entry]
        self.model.info["writers"] = self.names
        return self.model


def weighted_orthogonalize(model: "LensModel", direction: VectorLike, weights: LayerWeights
                           ) -> "LensModel":
    """A new ``LensModel`` with ``weights`` of the direction removed from each writer (the
    weights are recorded in ``info["orthogonalized"]``, which ``export_hf`` writes out)."""
    return WeightedModel(model, direction).apply(weights)


def _val_scorer(model: "LensModel", harmful: Sequence[str], harmless: Sequence[str],
                judge: Judge, max_new_tokens: int, batch_size: int):
    from .batching import iter_batches

    batches = list(iter_batches(model, list(harmless), batch_size, sort_by_length=True))
    base = [last_logits(model, b) for b in batches]

    def score(m: "LensModel", ivs: Sequence[Intervention] = ()) -> tuple[float, float]:
        texts = generate(m, list(harmful), interventions=ivs, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, progress=False)
        refusal = sum(bool(f) for f in judge(list(harmful), texts)) / len(harmful)
        kls = torch.cat([last_position_kl(b, last_logits(m, x, ivs))
                         for b, x in zip(base, batches)])
        return refusal, float(kls.mean())

    return score


def search_weights(
    model: "LensModel", direction: Direction, harmful_val: Sequence[str],
    harmless_val: Sequence[str], n_trials: int = 40, seed: int = 0, separate: bool = False,
    max_new_tokens: int = 16, batch_size: int = 32, judge: Judge | None = None,
    timeout_s: float | None = None, random_vector: Tensor | None = None,
) -> dict[str, Any]:
    """Multi-objective TPE over kernel parameters (refusal on ``harmful_val``, KL on
    ``harmless_val``; both minimised). Returns every trial, the Pareto front, the uniform
    (single-direction) trial and, with ``random_vector``, the random direction's uniform
    ablation measured the same way.

    ``timeout_s`` is a budget the trials keep to: a trial starts only if the longest trial so
    far would still end within it (the uniform trial always runs), so the search overruns only
    by what a trial takes beyond the longest before it, not by a whole trial as a check between
    trials would."""
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}.")
    if not harmful_val or not harmless_val:
        raise ValueError("Pass non-empty harmful and harmless validation prompts.")
    judge = judge or SubstringJudge()
    L = model.n_layers
    work = WeightedModel(model, direction)
    score = _val_scorer(model, harmful_val, harmless_val, judge, max_new_tokens, batch_size)
    parts = ("attn", "mlp") if separate else ("attn",)

    def kernels(trial) -> LayerWeights:
        ks = [Kernel(trial.suggest_float(f"{p}_peak", 0.0, L - 1.0),
                     trial.suggest_float(f"{p}_width", 0.0, float(L)),
                     trial.suggest_float(f"{p}_w_max", 0.0, W_MAX),
                     trial.suggest_float(f"{p}_w_min", 0.0, W_MAX)) for p in parts]
        return LayerWeights.from_kernels(L, ks[0], ks[-1] if separate else None)

    def objective(trial) -> tuple[float, float]:
        t = time.perf_counter()
        weights = kernels(trial)
        out = score(work.apply(weights))
        trial.set_user_attr("seconds", time.perf_counter() - t)
        trial.set_user_attr("weights", asdict(weights))
        return out

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    uniform = {f"{p}_{k}": v for p in parts
               for k, v in (("peak", 0.0), ("width", float(L)), ("w_max", 1.0), ("w_min", 1.0))}
    study.enqueue_trial(uniform)
    t0 = time.perf_counter()
    def keep_to_budget(study, _trial) -> None:
        longest = max(t.user_attrs.get("seconds", 0.0) for t in study.trials)
        if timeout_s is not None and time.perf_counter() - t0 + longest > timeout_s:
            study.stop()

    study.optimize(objective, n_trials=n_trials, callbacks=[keep_to_budget])
    seconds = time.perf_counter() - t0
    trials = [{"number": t.number, "params": t.params, "refusal": t.values[0], "kl": t.values[1],
               "seconds": t.user_attrs["seconds"], "weights": t.user_attrs["weights"]}
              for t in study.trials if t.values is not None]
    out = {"trials": trials, "pareto": sorted(t.number for t in study.best_trials),
           "uniform": trials[0], "n_trials": len(trials), "seconds": seconds, "seed": seed,
           "separate": separate, "n_harmful_val": len(harmful_val),
           "n_harmless_val": len(harmless_val), "max_new_tokens": max_new_tokens,
           "budget_s": timeout_s}
    if random_vector is not None:
        from .interventions import ablation

        r, k = score(model, [ablation(model, random_vector)])
        out["random"] = {"refusal": r, "kl": k}
    out["chosen"] = choose_point(trials, out["pareto"])
    return out


def choose_point(trials: Sequence[dict[str, Any]], pareto: Sequence[int]) -> dict[str, Any]:
    """The rule fixed before any test measurement: among the Pareto trials whose validation
    refusal is at most the uniform (single-direction, trial 0) one's, the lowest KL (ties: lower
    refusal); the uniform trial itself if none is."""
    by_num = {t["number"]: t for t in trials}
    uniform = by_num[0]
    ok = [by_num[n] for n in pareto if by_num[n]["refusal"] <= uniform["refusal"]]
    return min(ok, key=lambda t: (t["kl"], t["refusal"])) if ok else uniform
