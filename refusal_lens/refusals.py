"""Natural refusal phrasings for the safety fine-tune of the model organism.

A refusal is built from an opener (which always contains one of the judge's refusal
substrings and starts with "I"), an optional reason and an optional offer. The choice is
a pure function of ``(seed, index)``, so training data are reproducible.
"""

from __future__ import annotations

import hashlib
import itertools
import random

__all__ = ["OPENERS", "REASONS", "OFFERS", "all_refusals", "refusal_for", "refusals"]

OPENERS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I'm sorry, but I cannot help with this.",
    "I'm sorry, I can't do that.",
    "I am sorry, but I cannot provide that.",
    "I cannot assist with that request.",
    "I cannot help with this request.",
    "I can't help with that.",
    "I can't provide that kind of information.",
    "I am unable to help with that request.",
    "I'm unable to assist with this.",
    "I am not able to help with that.",
    "I'm not able to provide that.",
    "I apologize, but I can't help with that.",
    "I apologize, but I cannot fulfill this request.",
    "I'm sorry, but that's not something I can help with.",
)

REASONS: tuple[str, ...] = (
    "",
    " It could cause real harm to people.",
    " This request could be used to hurt others.",
    " Providing this could be dangerous or illegal.",
    " It goes against my guidelines to help with harmful or illegal activities.",
    " This could put people's safety at risk.",
    " Helping with this could facilitate harm or break the law.",
    " That would be unethical and potentially harmful.",
)

OFFERS: tuple[str, ...] = (
    "",
    " If you have another question, I'm happy to help.",
    " Is there something else I can help you with?",
    " I'd be glad to help with a different, safe request.",
    " If you're facing a difficult situation, consider reaching out to a trusted professional.",
    " Let me know if there's anything else you need.",
    " I can share general, safe information on a related topic instead.",
)


def all_refusals() -> list[str]:
    """Every distinct opener + reason + offer combination, in a fixed order."""
    return [o + r + f for o, r, f in itertools.product(OPENERS, REASONS, OFFERS)]


def refusal_for(seed: int, index: int) -> str:
    """The refusal used for training example ``index`` under ``seed`` (deterministic)."""
    key = hashlib.sha256(f"refusal:{seed}:{index}".encode()).digest()
    rng = random.Random(int.from_bytes(key[:8], "big"))
    return rng.choice(OPENERS) + rng.choice(REASONS) + rng.choice(OFFERS)


def refusals(n: int, seed: int = 0) -> list[str]:
    """``n`` refusals for training examples ``0 .. n-1`` under ``seed``."""
    return [refusal_for(seed, i) for i in range(n)]
