"""A compact GCG search (Zou et al. 2023) for one universal adversarial suffix.

The search optimises one *universal* suffix over a few harmful training prompts: each step
takes the gradient of the loss with respect to a one-hot encoding of the suffix tokens, samples
single-token swaps from the top-k tokens per position, scores all candidates in batches and
keeps the best. The chat prefix before the suffix is run once per prompt and its key/value
cache reused, so a candidate costs only ``suffix + template + target`` tokens. The loss is the
cross-entropy of a compliant target opening (default ``"Sure, here is"``) plus, optionally,
``softplus`` of the log-odds of a refusal token at the first answer position (both purely
behavioural). Suffix text helpers and random controls: :mod:`refusal_lens.suffixes`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .configs import GCGConfig
from .console import progress_bar
from .suffixes import (SuffixError, ids_to_suffix, in_context_ok, model_refusal_ids,
                       random_suffix, split_prompt, suffix_ids, suffix_vocab)

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["GCGConfig", "SuffixResult", "gcg_search"]


@dataclass
class SuffixResult:
    """The best suffix found and how the search went."""

    suffix: str
    ids: list[int]
    loss: float
    best_step: int
    steps_run: int
    losses: list[float]
    early_stopped: bool
    seconds: float
    prompts: list[str]
    config: dict
    n_dropped: int = 0
    in_context_ok: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Prompt:
    """One training prompt: its prefix KV cache, post-suffix ids and target ids."""

    def __init__(self, model: "LensModel", instruction: str, target_ids: list[int]) -> None:
        before, after = split_prompt(model, instruction)
        dev = model.device
        with torch.no_grad():
            out = model.hf_model(input_ids=torch.tensor([before], device=dev), use_cache=True)
        self.kv = [(lay.keys, lay.values) for lay in out.past_key_values.layers]
        self.tail = torch.tensor(after + target_ids[:-1], device=dev)
        self.n_target = len(target_ids)
        self.target = torch.tensor(target_ids, device=dev)

    def cache(self, n: int):
        from transformers.cache_utils import DynamicCache

        return DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1))
                             for k, v in self.kv])


class _Objective:
    """Loss of suffix candidates, summed over the training prompts."""

    def __init__(self, model: "LensModel", instructions: Sequence[str], cfg: GCGConfig) -> None:
        tok = model.tokenizer
        self.model, self.cfg = model, cfg
        target_ids = tok(cfg.target, add_special_tokens=False)["input_ids"]
        if not target_ids:
            raise ValueError("The target string tokenizes to nothing; pass e.g. 'Sure, here is'.")
        self.prompts = [_Prompt(model, x, list(target_ids)) for x in instructions]
        self.embed = model.hf_model.get_input_embeddings().weight
        self.is_refusal = torch.zeros(self.embed.shape[0], dtype=torch.bool, device=model.device)
        self.is_refusal[model_refusal_ids(model)] = True

    def _loss(self, logits: Float[Tensor, "n t vocab"], p: _Prompt) -> tuple[Tensor, Tensor]:
        ce = F.cross_entropy(logits.transpose(1, 2).float(), p.target.expand(len(logits), -1),
                             reduction="none").mean(-1)
        hit = (logits.argmax(-1) == p.target).all(-1)
        if self.cfg.refusal_weight:
            # scoring.refusal_metric's log-odds, in float32 rather than its float64: the two
            # differ in the last float32 bits, enough to reorder near-tied candidates, and the
            # shipped suffix (its losses, its replay command) was searched with this one.
            first = logits[:, 0].float()
            odds = torch.logsumexp(first.masked_fill(~self.is_refusal, -torch.inf), -1) - \
                torch.logsumexp(first.masked_fill(self.is_refusal, -torch.inf), -1)
            ce = ce + self.cfg.refusal_weight * F.softplus(odds)
        return ce, hit

    def _run(self, p: _Prompt, embeds: Tensor) -> Tensor:
        n = embeds.shape[0]
        tail = self.embed[p.tail].expand(n, -1, -1)
        out = self.model.hf_model(inputs_embeds=torch.cat([embeds, tail], 1),
                                  past_key_values=p.cache(n), use_cache=True,
                                  logits_to_keep=p.n_target)
        return out.logits

    def gradient(self, ids: Int[Tensor, "pos"]) -> tuple[Float[Tensor, "pos vocab"], float]:
        """Gradient of the loss w.r.t. the one-hot suffix, and the loss itself."""
        onehot = F.one_hot(ids, self.embed.shape[0]).to(self.embed.dtype).requires_grad_(True)
        total = 0.0
        with torch.enable_grad():
            for p in self.prompts:
                loss = self._loss(self._run(p, (onehot @ self.embed)[None]), p)[0].sum()
                (loss / len(self.prompts)).backward()
                total += float(loss.detach()) / len(self.prompts)
        return onehot.grad, total

    @torch.no_grad()
    def losses(self, cands: Int[Tensor, "n pos"], chunk: int = 64) -> tuple[Tensor, Tensor]:
        """Mean loss over prompts and 'target reached on every prompt' of each candidate."""
        loss = torch.zeros(len(cands), device=cands.device)
        hit = torch.ones(len(cands), dtype=torch.bool, device=cands.device)
        for p in self.prompts:
            for s in range(0, len(cands), chunk):
                part = cands[s: s + chunk]
                lo, h = self._loss(self._run(p, self.embed[part]), p)
                loss[s: s + chunk] += lo / len(self.prompts)
                hit[s: s + chunk] &= h
        return loss, hit


def _sample(ids: Tensor, grad: Tensor, allowed: Tensor, spaced: Tensor, topk: int, n: int,
            gen: torch.Generator) -> Int[Tensor, "n pos"]:
    """``n`` candidates, each with one position swapped to a top-k (most negative grad) token."""
    g = grad.clone()
    g[:, ~allowed] = float("inf")
    g[0, ~spaced] = float("inf")
    top = (-g).topk(topk, dim=-1).indices  # (pos, topk)
    pos = torch.randint(0, len(ids), (n,), generator=gen)
    pick = torch.randint(0, topk, (n,), generator=gen)
    cands = ids.repeat(n, 1)
    cands[torch.arange(n), pos] = top[pos, pick]
    return cands


def _filter(tokenizer: Any, cands: Tensor) -> tuple[Tensor, int]:
    """Drop duplicates and candidates whose decoded text re-tokenizes differently."""
    keep, seen = [], set()
    for i, row in enumerate(cands.tolist()):
        key = tuple(row)
        if key in seen:
            continue
        seen.add(key)
        text = tokenizer.decode(row, clean_up_tokenization_spaces=False).strip()
        if text and suffix_ids(tokenizer, text) == row:
            keep.append(i)
    return cands[keep], len(cands) - len(keep)


def gcg_search(model: "LensModel", instructions: Sequence[str], config: GCGConfig | None = None,
               progress: bool = True, **overrides: Any) -> SuffixResult:
    """Optimise one universal suffix over ``instructions`` (use training prompts, not test ones)."""
    cfg = config or GCGConfig()
    cfg = GCGConfig(**{**asdict(cfg), **overrides})
    if not instructions:
        raise ValueError("Pass at least one instruction to optimise the suffix on.")
    if cfg.n_tokens < 1 or cfg.steps < 0 or cfg.topk < 1 or cfg.batch < 1:
        raise ValueError(f"Invalid search settings: {cfg}.")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = model.tokenizer
    init = cfg.init or random_suffix(model, cfg.n_tokens, seed=cfg.seed)
    ids = torch.tensor(suffix_ids(tok, init), device=model.device)
    if cfg.init and len(ids) != cfg.n_tokens:
        raise SuffixError(f"The initial suffix has {len(ids)} tokens, not n_tokens={cfg.n_tokens}.")
    allowed, spaced = (m.to(model.device) for m in suffix_vocab(model))
    grads_were = [p.requires_grad for p in model.hf_model.parameters()]
    for p in model.hf_model.parameters():
        p.requires_grad_(False)
    try:
        obj = _Objective(model, list(instructions), cfg)
        best_loss, best_hit = (float(x[0]) for x in obj.losses(ids[None]))
        best_ids, best_step, losses, dropped, stopped = ids.clone(), 0, [best_loss], 0, False
        bar = progress_bar(range(1, cfg.steps + 1), desc="GCG", disable=not progress, leave=False)
        for step in bar:
            if cfg.early_stop and best_hit:
                stopped = True
                break
            if cfg.max_seconds is not None and time.time() - t0 > cfg.max_seconds:
                break
            grad, _ = obj.gradient(ids)
            cands, n_drop = _filter(tok, _sample(ids, grad, allowed, spaced, cfg.topk, cfg.batch,
                                                 gen))
            dropped += n_drop
            if len(cands) == 0:
                continue
            cl, hit = obj.losses(cands)
            j = int(cl.argmin())
            ids, cur = cands[j].clone(), float(cl[j])
            losses.append(cur)
            if cur < best_loss:
                best_loss, best_ids, best_step, best_hit = cur, ids.clone(), step, bool(hit[j])
            bar.set_postfix(loss=f"{cur:.3f}", best=f"{best_loss:.3f}")
    finally:
        for p, g in zip(model.hf_model.parameters(), grads_were):
            p.requires_grad_(g)
    text, _ = ids_to_suffix(tok, best_ids.tolist())
    return SuffixResult(
        suffix=text, ids=best_ids.tolist(), loss=best_loss, best_step=best_step,
        steps_run=len(losses) - 1, losses=losses, early_stopped=stopped,
        seconds=round(time.time() - t0, 1), prompts=list(instructions), config=asdict(cfg),
        n_dropped=dropped, in_context_ok=in_context_ok(model, instructions, text),
    )
