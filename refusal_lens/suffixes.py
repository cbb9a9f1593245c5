"""Adversarial suffixes: a compact GCG search (Zou et al. 2023) and random control suffixes.

A suffix is appended to an instruction as ``instruction + " " + suffix``. The search optimises
one *universal* suffix over a few harmful training prompts: each step takes the gradient of the
loss with respect to a one-hot encoding of the suffix tokens, samples single-token swaps from
the top-k tokens per position, scores all candidates in batches and keeps the best. The chat
prefix before the suffix is run once per prompt and its key/value cache reused, so a candidate
costs only ``suffix + template + target`` tokens. The loss is the cross-entropy of a compliant
target opening (default ``"Sure, here is"``) plus, optionally, ``softplus`` of the log-odds of a
refusal token at the first answer position (both purely behavioural).
"""

from __future__ import annotations

import json
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .configs import DEFAULT_TARGET, GCGConfig
from .console import progress_bar

if TYPE_CHECKING:
    from .model import LensModel

MARK = "@@SUFFIX@@"


class SuffixError(ValueError):
    """A suffix that cannot be used as given."""


# ---- text helpers ---------------------------------------------------------------------------
def apply_suffix(instructions: Sequence[str], suffix: str) -> list[str]:
    """``instruction + " " + suffix`` for each instruction (the suffix is stripped first)."""
    if not isinstance(suffix, str) or not suffix.strip():
        raise ValueError("The suffix is empty: pass the text of a suffix "
                         "(see `refusal-lens suffix search`).")
    if isinstance(instructions, str):
        raise TypeError("apply_suffix() takes a list of instructions; wrap one as [text].")
    return [f"{x} {suffix.strip()}" for x in instructions]


def suffix_ids(tokenizer: Any, suffix: str) -> list[int]:
    """Token ids the suffix takes in context (tokenized with its leading space)."""
    if not suffix.strip():
        raise ValueError("The suffix is empty.")
    return list(tokenizer(" " + suffix.strip(), add_special_tokens=False)["input_ids"])


def ids_to_suffix(tokenizer: Any, ids: Sequence[int]) -> tuple[str, dict]:
    """Decode suffix ids to text and report whether the text re-tokenizes to the same ids.

    Returns ``(text, info)``; ``info["retokenizes"]`` is False (and a warning is issued) when the
    decoded text tokenizes to different ids, with ``info["n_tokens"]`` the length it really has.
    """
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("No suffix ids given.")
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False).strip()
    if not text:
        raise SuffixError(f"Suffix ids {ids} decode to whitespace only.")
    again = suffix_ids(tokenizer, text)
    info = {"n_tokens_requested": len(ids), "n_tokens": len(again), "retokenizes": again == ids}
    if again != ids:
        warnings.warn(
            f"The suffix {text!r} re-tokenizes to {len(again)} tokens, not the {len(ids)} "
            "it was built from; its effect is that of the re-tokenized ids. Use "
            "random_suffix()/gcg_search(), which only keep suffixes that round-trip.",
            stacklevel=2,
        )
    return text, info


@lru_cache(maxsize=8)
def _allowed_cached(tokenizer: Any, vocab_rows: int) -> tuple[Tensor, Tensor]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    allowed = torch.zeros(vocab_rows, dtype=torch.bool)
    spaced = torch.zeros(vocab_rows, dtype=torch.bool)
    for i in range(min(vocab_rows, len(tokenizer))):
        if i in special:
            continue
        text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        if not text.strip() or not text.isascii() or not text.isprintable():
            continue
        allowed[i] = True
        # A token that stands on its own after a space (the first suffix position).
        spaced[i] = suffix_ids(tokenizer, text) == [i]
    return allowed, spaced


def suffix_vocab(model: "LensModel") -> tuple[Bool[Tensor, "vocab"], Bool[Tensor, "vocab"]]:
    """Masks of usable suffix tokens: printable ASCII, not special; and those valid first."""
    rows = int(model.hf_model.get_input_embeddings().weight.shape[0])
    return _allowed_cached(model.tokenizer, rows)


def random_suffix(model: "LensModel", n_tokens: int = 20, seed: int = 0,
                  max_tries: int = 1000) -> str:
    """A random suffix of exactly ``n_tokens`` tokens from the same filtered vocabulary as GCG."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}.")
    allowed, spaced = suffix_vocab(model)
    pool, first = allowed.nonzero().flatten().tolist(), spaced.nonzero().flatten().tolist()
    rng = random.Random(seed)
    for _ in range(max_tries):
        ids = [rng.choice(first)] + [rng.choice(pool) for _ in range(n_tokens - 1)]
        text = model.tokenizer.decode(ids, clean_up_tokenization_spaces=False).strip()
        if text and suffix_ids(model.tokenizer, text) == ids:
            return text
    raise SuffixError(f"No {n_tokens}-token random suffix round-trips after {max_tries} tries.")


# ---- prompt pieces --------------------------------------------------------------------------
def split_prompt(model: "LensModel", instruction: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt before and after where a suffix goes."""
    rendered = model.format([f"{instruction} {MARK}"])[0]
    i = rendered.find(MARK)
    if i < 1 or rendered[i - 1] != " ":
        raise SuffixError("The chat template alters the user text; cannot locate the suffix.")
    tok = model.tokenizer
    before = tok(rendered[: i - 1], add_special_tokens=False)["input_ids"]
    after = tok(rendered[i + len(MARK):], add_special_tokens=False)["input_ids"]
    return list(before), list(after)


def in_context_ok(model: "LensModel", instructions: Sequence[str], suffix: str) -> bool:
    """True if every full prompt tokenizes as ``before + suffix ids + after`` (no merges)."""
    ids = suffix_ids(model.tokenizer, suffix)
    for instr, prompt in zip(instructions, model.format(apply_suffix(instructions, suffix))):
        before, after = split_prompt(model, instr)
        full = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if list(full) != before + ids + after:
            return False
    return True


# ---- the search -----------------------------------------------------------------------------
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


def _refusal_ids(model: "LensModel") -> list[int]:
    from .scoring import refusal_token_ids

    syn = model.info.get("synthetic")
    if syn is not None:
        return model.tokenizer.convert_tokens_to_ids(list(syn.refusal_tokens))
    unk = model.tokenizer.unk_token_id
    return [i for i in refusal_token_ids(model.tokenizer) if i != unk]


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
        self.is_refusal[_refusal_ids(model)] = True

    def _loss(self, logits: Float[Tensor, "n t vocab"], p: _Prompt) -> tuple[Tensor, Tensor]:
        ce = F.cross_entropy(logits.transpose(1, 2).float(), p.target.expand(len(logits), -1),
                             reduction="none").mean(-1)
        hit = (logits.argmax(-1) == p.target).all(-1)
        if self.cfg.refusal_weight:
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


def suffix_conditions(harmful: Sequence[str], harmless: Sequence[str] | None, adversarial: str,
                      random_suffixes: Sequence[str]) -> dict[str, list[str]]:
    """The analysis conditions: harmful, + adversarial suffix, + random suffix, harmless.

    Random suffixes are assigned to prompts in turn, so several seeds are averaged over.
    """
    if not random_suffixes:
        raise ValueError("Pass at least one random suffix (see random_suffix()).")
    harmful = list(harmful)
    rand = [f"{x} {random_suffixes[i % len(random_suffixes)].strip()}"
            for i, x in enumerate(harmful)]
    out = {"harmful": harmful, "harmful + adversarial suffix": apply_suffix(harmful, adversarial),
           "harmful + random suffix": rand}
    if harmless:
        out["harmless"] = list(harmless)
    return out


# ---- choosing prompts and measuring the effect ---------------------------------------------
@torch.no_grad()
def refused_prompts(model: "LensModel", instructions: Sequence[str], n: int,
                    batch_size: int = 16) -> list[str]:
    """The first ``n`` instructions whose next-token refusal log-odds are positive (else top-n)."""
    from .scoring import last_logits, refusal_metric

    scores = []
    for s in range(0, len(instructions), batch_size):
        batch = model.encode_instructions(instructions[s: s + batch_size])
        scores.append(refusal_metric(last_logits(model, batch), _refusal_ids(model)).cpu())
        if sum(int((x > 0).sum()) for x in scores) >= n:
            break
    sc = torch.cat(scores)
    picked = [instructions[i] for i in range(len(sc)) if sc[i] > 0][:n]
    if len(picked) < n:
        order = sc.argsort(descending=True).tolist()
        picked += [instructions[i] for i in order if instructions[i] not in picked][: n - len(picked)]
    return picked


def measure_effect(model: "LensModel", instructions: Sequence[str], suffix: str,
                   random_suffixes: Sequence[str], max_new_tokens: int = 32,
                   batch_size: int = 16, progress: bool = True) -> dict:
    """Refusal rates (substring judge, greedy) without suffix, with it, and with random ones."""
    from .generation import generate
    from .scoring import is_refusal

    def rate(instrs: list[str], desc: str) -> tuple[float, list[bool]]:
        texts = generate(model, instrs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=progress)
        flags = [is_refusal(t) for t in texts]
        if progress:
            print(f"[suffix] {desc}: refusal {sum(flags) / len(flags):.3f}", file=sys.stderr)
        return sum(flags) / len(flags), flags

    instructions = list(instructions)
    base, base_flags = rate(instructions, "no suffix")
    adv, _ = rate(apply_suffix(instructions, suffix), "adversarial suffix")
    rand = {s: rate(apply_suffix(instructions, s), f"random suffix {i}")[0]
            for i, s in enumerate(random_suffixes)}
    mean_rand = sum(rand.values()) / len(rand) if rand else float("nan")
    return {"n_prompts": len(instructions), "max_new_tokens": max_new_tokens,
            "refusal_no_suffix": base, "refusal_adversarial": adv,
            "refusal_random": list(rand.values()), "refusal_random_mean": mean_rand,
            "drop_adversarial": base - adv, "drop_random_mean": base - mean_rand,
            "random_suffixes": list(rand), "refused_without_suffix": base_flags}


# ---- shipped suffixes -----------------------------------------------------------------------
def shipped_suffixes() -> dict:
    """The suffixes shipped with the package (``refusal_lens/data/suffixes.json``)."""
    from importlib.resources import files

    path = files("refusal_lens") / "data" / "suffixes.json"
    if not path.is_file():
        raise FileNotFoundError(f"No shipped suffixes at {path}; run `refusal-lens suffix search`.")
    return json.loads(path.read_text())


def shipped_suffix(model_name: str = "embedded") -> dict:
    """The shipped entry for one model (``suffix``, ``ids``, ``command``, ``effect`` ...)."""
    data = shipped_suffixes()
    if model_name not in data:
        raise KeyError(f"No shipped suffix for {model_name!r}; available: {sorted(data)}.")
    return data[model_name]
