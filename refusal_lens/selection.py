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

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .batching import iter_batches
from .console import progress_bar
from .directions import Direction, mean_diff_candidates, random_like
from .execution import last_logits
from .interventions import ablation, addition
from .scoring import last_position_kl, refusal_metric
from .selection_results import SelectionResult, dumps, jsonable, rule_direction_path
from .selection_rules import (RULES, STRICT_RULE, CandidateScore, SelectionConfig, SelectionError,
                              choose, choose_from_table, induce_bar, joint_pick)
from .sinks import project_off_basis, sink_basis

if TYPE_CHECKING:
    from .model import Batch, LensModel

__all__ = ["SelectionConfig", "CandidateScore", "SelectionResult", "SelectionError",
           "filter_and_fit", "fit_candidates", "select_direction", "jsonable",
           "dumps", "STRICT_RULE", "RULES", "rule_direction_path", "joint_pick", "induce_bar",
           "choose", "choose_from_table"]


def _by_length(model: "LensModel", instructions: Sequence[str]) -> list[str]:
    """Instructions sorted by prompt length in tokens (stable), so batches pad little."""
    ids = model.tokenizer(model.format(list(instructions)), add_special_tokens=False)["input_ids"]
    return [instructions[i] for i in sorted(range(len(ids)), key=lambda i: len(ids[i]))]


def _batches(model: "LensModel", instructions: Sequence[str], size: int) -> list["Batch"]:
    """Batches in the given order, at most ``size`` rows and ``64 * size`` padded tokens each."""
    return list(iter_batches(model, list(instructions), size, max_tokens=64 * size))


def _metric(model, batches, ids, interventions=()) -> Float[Tensor, "n"]:
    return torch.cat([refusal_metric(last_logits(model, b, interventions), ids) for b in batches])


def filter_and_fit(
    model: "LensModel", harmful: Sequence[str], harmless: Sequence[str],
    refusal_ids: Sequence[int], layers: Sequence[int], positions: Sequence[int],
    batch_size: int = 32, min_kept: int = 4, progress: bool = True,
) -> tuple[Float[Tensor, "layer pos d_model"], dict[str, Any]]:
    """Filter training prompts by the refusal metric and return the float64 mean differences
    (:func:`refusal_lens.directions.mean_diff_candidates`, the metric read from the same pass).

    If fewer than ``min_kept`` prompts of a side pass the filter, that side is used unfiltered
    (documented fallback, recorded in the returned info as ``"<side>_unfiltered": True``).
    """
    for name, data in (("harmful", harmful), ("harmless", harmless)):
        if len(data) == 0:
            raise SelectionError(f"No {name} training prompts: pass a non-empty list.")
    metrics: dict[str, list[Tensor]] = {"harmful": [], "harmless": []}

    def keep(side: str, logits: Tensor) -> Tensor:  # harmful refused (> 0), harmless not (< 0)
        m = refusal_metric(logits, refusal_ids)
        metrics[side].append(m)
        return m > 0 if side == "harmful" else m < 0

    diff = mean_diff_candidates(model, harmful, harmless, layers, positions, batch_size, keep=keep,
                                min_kept=min_kept, progress=progress)
    m_h, m_s = torch.cat(metrics["harmful"]), torch.cat(metrics["harmless"])
    kept_h, kept_s = int((m_h > 0).sum()), int((m_s < 0).sum())
    info: dict[str, Any] = {"harmful_total": len(harmful), "harmless_total": len(harmless),
                            "harmful_kept": kept_h, "harmless_kept": kept_s,
                            "harmful_unfiltered": kept_h < min_kept,
                            "harmless_unfiltered": kept_s < min_kept,
                            "harmful_train_metric": float(m_h.mean()),
                            "harmless_train_metric": float(m_s.mean())}
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


def _scorer(model: "LensModel", hh: list, hs: list, ids: Sequence[int], base_s: Tensor,
            group: int = 8):
    """Closures scoring vectors: bypass / KL of a list of vectors (ablated ``group`` at a time,
    in one pass per batch) and induce of one vector, on pre-tokenized val batches."""

    def ablated(vecs: Sequence[Tensor], batches) -> list[Tensor]:
        """Per vector, the last-position logits of every prompt of ``batches`` with it ablated."""
        out: list[Tensor] = []
        for i in range(0, len(vecs), group):
            grouped = [ablation(model, torch.stack(list(vecs[i:i + group])))]
            out += list(torch.cat([last_logits(model, b, grouped) for b in batches], 1))
        return out

    def bypass(vecs: Sequence[Tensor], batches=hh) -> list[float]:
        return [float(refusal_metric(x, ids).mean()) for x in ablated(vecs, batches)]

    def induce(vec: Tensor, layer: int) -> float:
        return float(_metric(model, hs, ids, [addition(model, vec, layer)]).mean())

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
        other, o_rule, o_fb, _ = choose(top, cfg, cut, kl_random, [], name, record=False,
                                         bar=bar)
        if other is not None:
            by_rule[name] = {"layer": other.layer, "position": other.position, "rule": o_rule,
                             "fallback": o_fb}
    chosen, rule, fallback, threshold = choose(top, cfg, cut, kl_random, notes, cfg.rule,
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
