"""The data of an experiment: deterministic splits of the public sets, and the fit and test data.

:func:`load_splits` turns the cached pools (:mod:`refusal_lens.data_sources`) into
deterministic, pairwise-disjoint splits (:class:`Splits`); :func:`default_data` assembles what
one run of the pipeline uses (:class:`ExperimentData`: per-seed train/val draws and the fixed
test sets), and :func:`heldout_instructions` draws prompts none of those runs fitted on.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

from .data_sources import (TEST_SOURCE, DatasetError, Record, _sha, dedupe, load_pools,
                           norm_key)

__all__ = ["DatasetError", "Splits", "make_splits", "load_splits", "evenly_spaced", "FitData",
           "ExperimentData", "default_data", "heldout_instructions"]


def evenly_spaced(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all of them when ``n >= len(items)``): a
    subset of an ordered test set (JailbreakBench is sorted by category) that keeps its mix."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


@dataclass
class Splits:
    """Instruction splits (lists of strings); ``records[name]`` keeps categories and sources."""

    harmful_train: list[str]
    harmful_val: list[str]
    harmful_test: list[str]
    harmless_train: list[str]
    harmless_val: list[str]
    harmless_test: list[str]
    harmful_organism: list[str]
    harmless_organism: list[str]
    records: dict[str, list[Record]] = field(default_factory=dict, repr=False, compare=False)
    seed: int = 0

    NAMES: ClassVar[tuple[str, ...]] = (
        "harmful_train", "harmful_val", "harmful_test", "harmless_train",
        "harmless_val", "harmless_test", "harmful_organism", "harmless_organism")

    @classmethod
    def from_records(cls, records: dict[str, list[Record]], seed: int = 0) -> Splits:
        return cls(**{n: [r["instruction"] for r in records[n]] for n in cls.NAMES},
                   records=records, seed=seed)

    def sizes(self) -> dict[str, int]:
        return {n: len(getattr(self, n)) for n in self.NAMES}

    def responses(self, name: str) -> list[str] | None:
        """The datasets' reference answers for split ``name``, or ``None`` if any is missing."""
        recs = self.records.get(name) or []
        if len(recs) != len(getattr(self, name)) or not all(r.get("response") for r in recs):
            return None
        return [r["response"] for r in recs]

    def hash(self) -> str:
        """SHA-256 over the sorted contents of the train and val splits."""
        payload = {n: sorted(getattr(self, n)) for n in
                   ("harmful_train", "harmful_val", "harmless_train", "harmless_val")}
        return _sha(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def _take(pool: list[Record], sizes: dict[str, int], side: str) -> dict[str, list[Record]]:
    need = sum(sizes.values())
    if any(n < 0 for n in sizes.values()) or need > len(pool):
        detail = " + ".join(f"{k} {v}" for k, v in sizes.items())
        raise ValueError(f"requested {need} {side} instructions ({detail}) but only "
                         f"{len(pool)} are available")
    out, i = {}, 0
    for name, n in sizes.items():
        out[name], i = pool[i:i + n], i + n
    return out


def make_splits(harmful: Sequence[Record], harmless: Sequence[Record], *, seed: int = 0,
                n_train: int = 128, n_val: int = 32, n_test: int | None = None,
                n_organism: int = 512) -> Splits:
    """Build deterministic, pairwise-disjoint splits from record pools.

    Harmful records from JailbreakBench form the fixed, unshuffled harmful test
    set (if there are none, ``n_test`` or 100 are drawn from the pool instead).
    Everything else is drawn, in the order train, val, test, organism, from the
    pools shuffled with ``seed``. ``n_test`` is the harmless test size (default 128).
    """
    seen: set[str] = set()
    harmful_u = dedupe(list(harmful), seen)
    harmless_u = dedupe(list(harmless), seen)
    fixed = [r for r in harmful_u if r["source"] == TEST_SOURCE]
    h_pool = [r for r in harmful_u if r["source"] != TEST_SOURCE]
    s_pool = list(harmless_u)
    random.Random(f"harmful:{seed}").shuffle(h_pool)
    random.Random(f"harmless:{seed}").shuffle(s_pool)
    n_hl_test = 128 if n_test is None else n_test
    h_sizes = {"harmful_train": n_train, "harmful_val": n_val}
    if not fixed:
        h_sizes["harmful_test"] = 100 if n_test is None else n_test
    h_sizes["harmful_organism"] = n_organism
    records = _take(h_pool, h_sizes, "harmful")
    if fixed:
        records["harmful_test"] = fixed
    records |= _take(s_pool, {"harmless_train": n_train, "harmless_val": n_val,
                              "harmless_test": n_hl_test, "harmless_organism": n_organism},
                     "harmless")
    return Splits.from_records(records, seed=seed)


def load_splits(seed: int = 0, n_train: int = 128, n_val: int = 32, n_test: int | None = None,
                n_organism: int = 512) -> Splits:
    """Splits from the cached public datasets (fetched on first use); see :func:`make_splits`."""
    harmful, harmless = load_pools()
    return make_splits(harmful, harmless, seed=seed, n_train=n_train, n_val=n_val,
                       n_test=n_test, n_organism=n_organism)


@dataclass
class FitData:
    """Training and validation instructions for one seed."""

    harmful_train: list[str]
    harmful_val: list[str]
    harmless_train: list[str]
    harmless_val: list[str]

    def hash(self) -> str:
        payload = json.dumps({k: sorted(v) for k, v in vars(self).items()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ExperimentData:
    """Fixed held-out test prompts plus a per-seed source of train/val prompts."""

    name: str
    harmful_test: list[str]
    harmless_test: list[str]
    fit: Callable[[int], FitData]
    # reference answers to ``harmless_test`` for the cross-entropy check (``None``: the
    # model's own baseline completions are scored instead)
    harmless_reference: list[str] | None = None
    # the category of each ``harmful_test`` prompt (``None``: the data has no categories)
    harmful_categories: list[str] | None = None

    def evenly_spaced(self, n: int) -> "ExperimentData":
        """A copy whose test sets keep ``n`` prompts per side, spread evenly over each (see
        :func:`refusal_lens.datasets.evenly_spaced`), with references and categories kept
        aligned to their prompts."""
        def cut(items: list | None) -> list | None:
            return None if items is None else evenly_spaced(items, n)

        return replace(self, harmful_test=cut(self.harmful_test),
                       harmless_test=cut(self.harmless_test),
                       harmless_reference=cut(self.harmless_reference),
                       harmful_categories=cut(self.harmful_categories))


def _draw(pool: Sequence[str], n: int, seed: int, side: str) -> list[str]:
    if len(pool) < n:
        raise ValueError(f"Need {n} {side} instructions for train + val, only {len(pool)} remain.")
    pool = list(pool)
    random.Random(f"fit:{side}:{seed}").shuffle(pool)
    return pool[:n]


def _fit_from_pools(harmful: Sequence[str], harmless: Sequence[str], n_train: int, n_val: int):
    def fit(seed: int) -> FitData:
        h = _draw(harmful, n_train + n_val, seed, "harmful")
        s = _draw(harmless, n_train + n_val, seed, "harmless")
        return FitData(h[:n_train], h[n_train:], s[:n_train], s[n_train:])
    return fit


def default_data(model: Any, n_train: int = 128, n_val: int = 32,
                 n_test: int | None = None) -> ExperimentData:
    """The data for ``model``: its own prompts for the synthetic model, else the public sets.

    Public sets: test = JailbreakBench's 100 behaviours and the standard harmless test split.
    Seed 0 with the default sizes uses the standard train/val splits; other seeds draw train/val
    from the pools minus the test and organism-training prompts (so nothing the organism was
    fine-tuned on, or that is scored, is used for fitting).
    """
    syn = getattr(model, "info", {}).get("synthetic")
    if syn is not None:
        k = min(100 if n_test is None else n_test, len(syn.harmful) // 4)
        return ExperimentData("synthetic", syn.harmful[:k], syn.harmless[:k],
                              _fit_from_pools(syn.harmful[k:], syn.harmless[k:], n_train, n_val))
    ref, hp, sp = _public_pools()
    h_test = ref.harmful_test[:n_test] if n_test else ref.harmful_test
    s_test = ref.harmless_test[:n_test] if n_test else ref.harmless_test
    drawn = _fit_from_pools(hp, sp, n_train, n_val)

    def fit(seed: int) -> FitData:
        if seed == 0 and n_train == 128 and n_val == 32:
            return FitData(ref.harmful_train, ref.harmful_val, ref.harmless_train,
                           ref.harmless_val)
        return drawn(seed)

    ref_answers = ref.responses("harmless_test")
    cats = [r["category"] for r in ref.records["harmful_test"]][: len(h_test)]
    return ExperimentData("public (JailbreakBench test)", h_test, s_test, fit,
                          ref_answers[: len(s_test)] if ref_answers else None, cats)


def _public_pools() -> tuple[Any, list[str], list[str]]:
    """The standard splits, and the harmful / harmless pool instructions outside their test
    sets and the organism's training prompts (what train/val prompts are drawn from)."""
    ref = load_splits(seed=0)  # fixes the test sets and the organism's training prompts
    banned = {norm_key(x) for x in (ref.harmful_test + ref.harmless_test + ref.harmful_organism
                                    + ref.harmless_organism)}
    harmful_pool, harmless_pool = load_pools()
    hp = [r["instruction"] for r in harmful_pool if norm_key(r["instruction"]) not in banned]
    sp = [r["instruction"] for r in harmless_pool if norm_key(r["instruction"]) not in banned]
    return ref, hp, sp


def heldout_instructions(exclude: Sequence[FitData], n: int = 100, side: str = "harmless",
                         seed: int = 0) -> list[str]:
    """``n`` public instructions of ``side`` that are in no test set, no organism training set
    and none of the ``exclude`` fits' train/val prompts: a development set for side analyses
    that must not touch the test prompts or the prompts a direction was fitted on."""
    if side not in ("harmful", "harmless"):
        raise ValueError(f"side must be 'harmful' or 'harmless', got {side!r}.")
    _, hp, sp = _public_pools()
    used = {norm_key(x) for f in exclude for x in (f.harmful_train + f.harmful_val
                                                   + f.harmless_train + f.harmless_val)}
    pool = [x for x in (hp if side == "harmful" else sp) if norm_key(x) not in used]
    random.Random(f"heldout:{side}:{seed}").shuffle(pool)
    if len(pool) < n:
        raise ValueError(f"Only {len(pool)} held-out {side} instructions remain; ask for fewer.")
    return pool[:n]
