"""Adversarial and random suffixes: text helpers, their effect on refusal, the shipped ones.

A suffix is appended to an instruction as ``instruction + " " + suffix``; random suffixes come
from the same filtered vocabulary as the GCG search (:mod:`refusal_lens.gcg`) and serve as its
controls. :func:`measure_effect` compares refusal without a suffix, with the adversarial one
and with random ones; :func:`shipped_suffix` reads the suffix shipped with the package.
"""

from __future__ import annotations

import json
import random
import sys
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor


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
def model_refusal_ids(model: "LensModel") -> list[int]:
    """The refusal token ids the suffix work scores: the synthetic model's planted ones, else
    :func:`refusal_lens.scoring.refusal_token_ids` (without the unknown token)."""
    from .scoring import refusal_token_ids

    syn = model.info.get("synthetic")
    if syn is not None:
        return model.tokenizer.convert_tokens_to_ids(list(syn.refusal_tokens))
    unk = model.tokenizer.unk_token_id
    return [i for i in refusal_token_ids(model.tokenizer) if i != unk]


@torch.no_grad()
def refused_prompts(model: "LensModel", instructions: Sequence[str], n: int,
                    batch_size: int = 16) -> list[str]:
    """The first ``n`` instructions whose next-token refusal log-odds are positive (else top-n)."""
    from .scoring import last_logits, refusal_metric

    scores = []
    for s in range(0, len(instructions), batch_size):
        batch = model.encode_instructions(instructions[s: s + batch_size])
        scores.append(refusal_metric(last_logits(model, batch), model_refusal_ids(model)).cpu())
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
    """Refusal rates (substring judge, greedy) without suffix, with it, and with random ones:
    each condition is one evaluation arm (:mod:`refusal_lens.evaluation`) without hooks."""
    from .evaluation import _arm
    from .scoring import SubstringJudge

    def rate(instrs: list[str], desc: str) -> tuple[float, list[bool]]:
        arm = _arm(model, desc, "harmful", instrs, (), SubstringJudge(), max_new_tokens,
                   batch_size, progress)
        if progress:
            print(f"[suffix] {desc}: refusal {arm.rate:.3f}", file=sys.stderr)
        return arm.rate, arm.flags

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
