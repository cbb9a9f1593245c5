"""Direction selection: filter prompts, fit difference-in-means candidates, score, pick one.

Follows Arditi et al. (2024): keep harmful training prompts the model refuses (refusal metric
> 0) and harmless ones it does not (< 0); fit ``r = mean(harmful) - mean(harmless)`` of
``resid_pre`` at every (layer, post-instruction position); score each candidate on validation
prompts and keep the lowest ``bypass`` among those that pass the filters.

Scores (all at the last prompt position):

* ``bypass``: mean refusal metric on harmful val prompts with the unit direction ablated
  everywhere (lower is better);
* ``induce``: mean refusal metric on harmless val prompts with the raw vector added at its layer;
* ``kl``: mean ``KL(unablated || ablated)`` on harmless val prompts.

Filters: finite scores, ``layer < max_layer_frac * n_layers``, ``kl <= kl_threshold``,
``induce > bar`` with ``bar = min(0, mean refusal metric of the harmful val prompts without
intervention)``. The paper's bar is 0: addition must make the refusal tokens likelier than not.
That presumes the model's own refusals sit above 0; where its harmful prompts sit below 0 on
average (a model whose refusals open with a weakly predicted token, or that refuses only some
of them), asking addition to go beyond where the model's own harmful prompts are rejects every
candidate, so the bar is where those prompts are. For a model whose harmful val prompts average
above 0 the bar is the paper's 0. It is computed from validation prompts only and recorded
(``SelectionResult.induce_bar``).

Speed: layers at or above the layer cut are never scored (the filter would discard them
anyway); zero vectors (e.g. layer 0, where every prompt's template tokens have the same
embedding) are skipped; all remaining candidates are *screened* by ``bypass`` on the
``n_screen`` harmful val prompts with the highest unablated refusal metric, and only the
``top_k`` best are fully scored on all val prompts. Every candidate stays in the score table.

Fallback (never a crash): if no fully scored candidate passes, the KL filter is relaxed to
``kl <= max(kl_threshold, random_kl_factor * kl_random)``, where ``kl_random`` is the KL of
ablating norm-matched random directions (a direction-agnostic cost: on models whose first token
has a huge residual norm any ablation costs a lot of KL). If still none pass, the KL filter is
dropped; then the induce filter too. The rule used is recorded in ``SelectionResult.rule`` and
``fallback`` is set.

Selection rules (``SelectionConfig.rule``, fixed here before any test measurement):

* ``paper``: the paper's rule, lowest ``bypass`` among the candidates of the first filter tier
  that has any;
* ``joint`` (default): the same filter tiers, but among that tier's candidates the one whose *worse*
  rank is best, ranking by ``bypass`` (ascending) and by ``induce`` (descending) within the
  tier; ties go to the lower bypass. The paper's rule optimises removing refusal only (its one
  test of addition is ``induce > bar``); ``joint`` asks a candidate to be good at both uses, on
  validation prompts only, which is why it is the default: a direction is used both to remove
  refusal and to induce it.

Both rules see the same scores, so ``SelectionResult.by_rule`` records what each would choose
and :meth:`SelectionResult.direction_for` builds the other rule's direction without rescoring.

Attention-sink protection (``sink_energy``, default 0.95; 0 gives the paper's exact vectors):
every candidate is projected off the subspace of the first token's residuals before it is
scored (:mod:`refusal_lens.sinks`), and the random controls are drawn off it too. Ablating a
direction's small sink component perturbs the first token's huge residual and costs KL and
cross-entropy that have nothing to do with refusal. The unprojected vector is kept with the
chosen direction (``Direction.tensors["mean_diff"]``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .activations import ActivationError, iter_batches
from .configs import SELECTION_RULES
from .console import progress_bar
from .directions import Direction, random_like
from .interventions import ablation_hooks, addition_hooks
from .model import check_positions
from .runner import tag
from .scoring import last_logits, last_position_kl, refusal_metric
from .sinks import project_off_basis, sink_basis

if TYPE_CHECKING:
    from .model import Batch, LensModel

__all__ = ["SelectionConfig", "CandidateScore", "SelectionResult", "SelectionError",
           "filter_and_fit", "fit_candidates", "select_direction", "jsonable",
           "dumps", "STRICT_RULE", "RULES", "rule_direction_path", "joint_pick", "induce_bar",
           "choose_from_table"]

STRICT_RULE = "strict: finite, layer < {cut}, kl <= {kl:g}, induce > {bar:.3g}; lowest bypass"


#: The selection rules (see the module docstring); the first is the default.
RULES = SELECTION_RULES


def rule_direction_path(folder: str | Path, rule: str, seed: int) -> Path:
    """Where a direction chosen by ``rule`` for ``seed`` is saved in ``folder`` (without the
    ``.safetensors`` suffix): written by ``analyses/selection_rules.py``, read by the analyses
    that build on it."""
    return Path(folder) / f"direction-{rule}-seed{seed}"


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


def _by_length(model: "LensModel", instructions: Sequence[str]) -> list[str]:
    """Instructions sorted by prompt length in tokens (stable), so batches pad little."""
    ids = model.tokenizer(model.format(list(instructions)), add_special_tokens=False)["input_ids"]
    return [instructions[i] for i in sorted(range(len(ids)), key=lambda i: len(ids[i]))]


def _batches(model: "LensModel", instructions: Sequence[str], size: int) -> list["Batch"]:
    """Batches in the given order, at most ``size`` rows and ``64 * size`` padded tokens each."""
    return list(iter_batches(model, list(instructions), size, max_tokens=64 * size))


def _metric(model, batches, ids, hooks=()) -> Float[Tensor, "n"]:
    return torch.cat([refusal_metric(last_logits(model, b, hooks), ids) for b in batches])


@torch.no_grad()
def _acts_and_metric(
    model: "LensModel", instructions: Sequence[str], layers: Sequence[int],
    positions: Sequence[int], ids: Sequence[int], batch_size: int, desc: str, progress: bool,
) -> tuple[Float[Tensor, "n layer pos d_model"], Float[Tensor, "n"]]:
    """One pass: per-prompt ``resid_pre`` at (layers, positions), and the refusal metric."""
    acts, metrics, current = [], [], {}

    cols = list(positions)
    if not cols or any(p >= 0 for p in cols):
        raise ValueError(f"positions must be negative offsets from the prompt's end, got {cols}.")

    def make_hook(i: int):
        def hook_fn(x: Tensor, hook=None) -> Tensor:
            current[i] = x[:, cols].float().cpu()  # left padding: every prompt ends last
            return x
        return tag(hook_fn, "read", hook_fn)  # read-only: may run on the plain path

    hooks = [(f"blocks.{l}.hook_resid_pre", make_hook(i)) for i, l in enumerate(layers)]
    for batch in iter_batches(model, list(instructions), batch_size, desc=desc if progress else None,
                              sort_by_length=True, max_tokens=64 * batch_size):
        if not bool(batch.attention_mask[:, -1].all()):
            raise ValueError("Activations are read at the last columns: pad batches on the left.")
        check_positions(cols, int(batch.attention_mask.sum(-1).min()))
        # a shared prefix (the system turn) may run once, as long as each row keeps its
        # post-instruction positions for itself
        room = int(batch.attention_mask.sum(-1).min()) - max(-p for p in cols)
        logits = last_logits(model, batch, hooks, max_prefix=max(1, room))
        metrics.append(refusal_metric(logits, ids))
        acts.append(torch.stack([current[i] for i in range(len(layers))], 1))
    out = torch.cat(acts)
    if not torch.isfinite(out).all():
        raise ActivationError("NaN or inf in residual activations; use float32 and check inputs.")
    return out, torch.cat(metrics)


def filter_and_fit(
    model: "LensModel", harmful: Sequence[str], harmless: Sequence[str],
    refusal_ids: Sequence[int], layers: Sequence[int], positions: Sequence[int],
    batch_size: int = 32, min_kept: int = 4, progress: bool = True,
) -> tuple[Float[Tensor, "layer pos d_model"], dict[str, Any]]:
    """Filter training prompts by the refusal metric and return the float64 mean differences.

    If fewer than ``min_kept`` prompts of a side pass the filter, that side is used unfiltered
    (documented fallback, recorded in the returned info as ``"<side>_unfiltered": True``).
    """
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if len(data) == 0:
            raise SelectionError(f"No {name} training prompts: pass a non-empty list.")
    a_h, m_h = _acts_and_metric(model, harmful, layers, positions, refusal_ids, batch_size,
                                f"fit: harmful ({len(harmful)})", progress)
    a_s, m_s = _acts_and_metric(model, harmless, layers, positions, refusal_ids, batch_size,
                                f"fit: harmless ({len(harmless)})", progress)
    keep_h, keep_s = m_h > 0, m_s < 0
    info: dict[str, Any] = {"harmful_total": len(harmful), "harmless_total": len(harmless),
                            "harmful_kept": int(keep_h.sum()), "harmless_kept": int(keep_s.sum()),
                            "harmful_unfiltered": False, "harmless_unfiltered": False,
                            "harmful_train_metric": float(m_h.mean()),
                            "harmless_train_metric": float(m_s.mean())}
    if int(keep_h.sum()) < min_kept:
        keep_h[:] = True
        info["harmful_unfiltered"] = True
    if int(keep_s.sum()) < min_kept:
        keep_s[:] = True
        info["harmless_unfiltered"] = True
    diff = a_h[keep_h].double().mean(0) - a_s[keep_s].double().mean(0)
    return diff, info


def fit_candidates(
    model: "LensModel", harmful_train: Sequence[str], harmless_train: Sequence[str],
    refusal_ids: Sequence[int], layers: Sequence[int], positions: Sequence[int],
    config: SelectionConfig | None = None, progress: bool = True,
) -> dict[str, Any]:
    """The candidates selection scores: filtered differences in means at (layers, positions),
    projected off the attention-sink basis (``config.sink_energy``).

    Returns ``diffs`` (projected, float64, ``(layer, pos, d_model)``), ``raw`` (unprojected),
    ``basis``, and the ``filtering`` and ``sink`` summaries.
    """
    cfg = config or SelectionConfig()
    raw, filtering = filter_and_fit(model, harmful_train, harmless_train, refusal_ids, layers,
                                    positions, cfg.batch_size, cfg.min_kept, progress)
    basis, sink = sink_basis(model, cfg.sink_energy)
    diffs = raw
    if basis.shape[0]:
        diffs = project_off_basis(raw, basis)
        sink["kept_norm_frac"] = float((diffs.norm(dim=-1) / raw.norm(dim=-1).clamp_min(1e-30))
                                       [raw.norm(dim=-1) > 0].mean())
    return {"diffs": diffs, "raw": raw, "basis": basis, "filtering": filtering, "sink": sink}


@torch.no_grad()
def _grouped_last_logits(model: "LensModel", batch: "Batch", hooks, k: int
                         ) -> Float[Tensor, "k batch vocab"]:
    """Last-position logits of ``k`` copies of ``batch``, copy ``g`` under group ``g``'s hooks."""
    copies = type(batch)(batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1))
    return last_logits(model, copies, hooks, groups=k).reshape(k, batch.input_ids.shape[0], -1)


def _scorer(model: "LensModel", hh: list, hs: list, ids: Sequence[int], base_s: Tensor,
            group: int = 8):
    """Closures scoring vectors: bypass / KL of a list of vectors (ablated ``group`` at a time,
    in one pass per batch) and induce of one vector, on pre-tokenized val batches."""

    def ablated(vecs: Sequence[Tensor], batches) -> list[Tensor]:
        """Per vector, the last-position logits of every prompt of ``batches`` with it ablated."""
        out: list[Tensor] = []
        for i in range(0, len(vecs), group):
            chunk = torch.stack(list(vecs[i:i + group]))
            hooks = ablation_hooks(model, chunk)
            per_batch = [_grouped_last_logits(model, b, hooks, len(chunk)) for b in batches]
            out += list(torch.cat(per_batch, 1))
        return out

    def bypass(vecs: Sequence[Tensor], batches=hh) -> list[float]:
        return [float(refusal_metric(x, ids).mean()) for x in ablated(vecs, batches)]

    def induce(vec: Tensor, layer: int) -> float:
        return float(_metric(model, hs, ids, addition_hooks(model, vec, layer)).mean())

    def kl(vecs: Sequence[Tensor]) -> list[float]:
        return [float(last_position_kl(base_s, x).mean()) for x in ablated(vecs, hs)]

    return bypass, induce, kl


def select_direction(
    model: "LensModel",
    harmful_train: Sequence[str], harmless_train: Sequence[str],
    harmful_val: Sequence[str], harmless_val: Sequence[str],
    refusal_ids: Sequence[int],
    config: SelectionConfig | None = None,
    positions: Sequence[int] | None = None,
    dataset_hash: str = "",
    progress: bool = True,
) -> SelectionResult:
    """Fit all candidates, screen and score them, and pick the refusal direction."""
    import time

    cfg = config or SelectionConfig()
    t0 = time.perf_counter()
    if not harmful_val or not harmless_val:
        raise SelectionError("Validation prompts are empty: pass harmful_val and harmless_val.")
    positions = list(model.post_instruction_positions if positions is None else positions)
    cut = math.ceil(cfg.max_layer_frac * model.n_layers)  # layers >= 0.8 L are discarded
    layers = list(range(max(1, cut)))
    fitted = fit_candidates(model, harmful_train, harmless_train, refusal_ids, layers, positions,
                            cfg, progress)
    diffs, raw, basis = fitted["diffs"], fitted["raw"], fitted["basis"]
    filtering, sink = fitted["filtering"], fitted["sink"]
    notes = [f"{side} training prompts used unfiltered: only {filtering[side + '_kept']} passed "
             f"the refusal-metric filter (minimum {cfg.min_kept})"
             for side in ("harmful", "harmless") if filtering[side + "_unfiltered"]]
    t_fit = time.perf_counter()

    harmful_val, harmless_val = _by_length(model, harmful_val), _by_length(model, harmless_val)
    hh = _batches(model, harmful_val, cfg.batch_size)
    hs = _batches(model, harmless_val, cfg.batch_size)
    base_s = torch.cat([last_logits(model, b) for b in hs])
    base_h = _metric(model, hh, refusal_ids)
    # Screen on the harmful val prompts the model refuses most strongly (most to remove).
    strongest = sorted(range(len(harmful_val)), key=lambda i: -float(base_h[i]))[:cfg.n_screen]
    screen = _batches(model, [harmful_val[i] for i in sorted(strongest)], cfg.batch_size)
    baseline = {"harmful_val_metric": float(base_h.mean()),
                "harmless_val_metric": float(torch.cat([refusal_metric(x[None], refusal_ids)
                                                        for x in base_s]).mean())}
    if cfg.group < 1:
        raise SelectionError(f"group must be >= 1, got {cfg.group}.")
    bypass, induce, kl = _scorer(model, hh, hs, refusal_ids, base_s, cfg.group)

    scores: list[CandidateScore] = []
    for li, layer in enumerate(layers):
        for pi, pos in enumerate(positions):
            scores.append(CandidateScore(layer, pos, float(diffs[li, pi].norm())))
    scale = max(s.norm for s in scores)
    live = []
    for s in scores:
        if not math.isfinite(s.norm) or s.norm <= 1e-6 * max(scale, 1e-30):
            s.discarded.append("zero or non-finite vector")
        else:
            live.append(s)
    if not live:
        raise SelectionError("Every candidate vector is zero or non-finite: harmful and harmless "
                             "activations do not differ at the post-instruction positions.")
    vec_of = {(s.layer, s.position): diffs[layers.index(s.layer), positions.index(s.position)]
              for s in live}
    for i in progress_bar(range(0, len(live), cfg.group), desc=f"screening {len(live)} candidates",
                          disable=not progress, leave=False):
        chunk = live[i:i + cfg.group]
        for s, b in zip(chunk, bypass([vec_of[(s.layer, s.position)] for s in chunk], screen)):
            s.screen_bypass = b
    ranked = sorted((s for s in live if math.isfinite(s.screen_bypass)),
                    key=lambda s: s.screen_bypass)
    top = ranked[:cfg.top_k]
    for s in live:
        if s not in top:
            s.discarded.append(f"screened out (not in the top {cfg.top_k} by screen bypass)")
    t_screen = time.perf_counter()
    top_vecs = [vec_of[(s.layer, s.position)] for s in top]
    # Direction-agnostic KL cost: ablate norm-matched random directions.
    rand = [random_like(top_vecs[0], cfg.seed + 7919 * (i + 1), basis)
            for i in range(cfg.n_random)] if top else []
    kls = kl(top_vecs + rand) if top else []
    for s, b, k in zip(top, bypass(top_vecs) if top else [], kls):
        s.bypass, s.kl, s.scored = b, k, True
    for s in progress_bar(top, desc=f"scoring top {len(top)}", disable=not progress,
                          leave=False):
        s.induce = induce(vec_of[(s.layer, s.position)], s.layer)
    kl_random = float(sum(kls[len(top):]) / len(rand)) if rand else math.nan
    t_score = time.perf_counter()

    bar = induce_bar(baseline["harmful_val_metric"])
    by_rule = {}
    for name in RULES:  # every rule on the same scores; reasons and notes once (own rule)
        if name == cfg.rule:
            continue
        other, o_rule, o_fb, _ = _choose(top, cfg, cut, kl_random, [], name, record=False,
                                         bar=bar)
        if other is not None:
            by_rule[name] = {"layer": other.layer, "position": other.position, "rule": o_rule,
                             "fallback": o_fb}
    chosen, rule, fallback, threshold = _choose(top, cfg, cut, kl_random, notes, cfg.rule,
                                                bar=bar)
    if chosen is None:
        raise SelectionError("No candidate has a finite bypass score; check the model's outputs.")
    li, pi = layers.index(chosen.layer), positions.index(chosen.position)
    vec = vec_of[(chosen.layer, chosen.position)].clone()
    sink["kept_norm_frac_chosen"] = float(vec.norm() / raw[li, pi].norm())
    direction = Direction(
        vec, chosen.layer, chosen.position,
        model=model.name, dataset_hash=dataset_hash, seed=cfg.seed,
        meta={"bypass": chosen.bypass, "induce": chosen.induce, "kl": chosen.kl,
              "rule": rule, "fallback": fallback, "kl_random": kl_random, "sink": sink,
              "induce_bar": bar},
        tensors={"mean_diff": raw[li, pi].float().clone(), "sink_basis": basis.float()},
    )
    direction.meta["selection_rule"] = cfg.rule
    if cfg.addition_layer == "best":  # validation prompts only, like every other score
        tried = {chosen.layer: chosen.induce}
        for layer in sorted({s.layer for s in top} - {chosen.layer}):
            tried[layer] = induce(vec_of[(chosen.layer, chosen.position)], layer)
        direction.meta["addition_layer"] = max(tried, key=lambda l: (tried[l], l == chosen.layer))
        direction.meta["addition_induce"] = {str(l): v for l, v in sorted(tried.items())}
    by_rule[cfg.rule] = {"layer": chosen.layer, "position": chosen.position, "rule": rule,
                         "fallback": fallback}
    timing = {"fit_s": t_fit - t0, "screen_s": t_screen - t_fit, "score_s": t_score - t_screen}
    return SelectionResult(direction, scores, rule, fallback, notes, list(refusal_ids), kl_random,
                           threshold, filtering, baseline, timing, sink,
                           {l: diffs[i, pi].float().clone() for i, l in enumerate(layers)},
                           {k: by_rule[k] for k in RULES if k in by_rule},
                           {(s.layer, s.position): vec_of[(s.layer, s.position)] for s in top},
                           bar)


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
    chosen, text, fallback, threshold = _choose(top, cfg, cut, kl_random, [], rule, record=False,
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


def _choose(top: list[CandidateScore], cfg: SelectionConfig, cut: int, kl_random: float,
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
