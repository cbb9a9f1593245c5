"""The arguments of a run: ``refusal-lens run``'s options, and checks of every value.

:func:`check_run_args` refuses any unusable value before model work, for the command line and
for :func:`refusal_lens.pipeline.run_pipeline` alike.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Sequence

from .cliargs import (
    add_model_option,
    add_placement_args,
    add_saved_direction_option,
    parse_with_placement,
)
from .configs import SELECTION_RULES
from .errors import InputError

if TYPE_CHECKING:  # torch-heavy: imported where used, so `refusal-lens run --help` is fast
    from .selection import SelectionConfig

__all__ = ["FAST", "check_run_args", "parse_run_args"]

#: Small counts for smoke tests (``--fast``).
FAST = dict(n_train=32, n_val=8, n_test=16, max_new_tokens=24, seeds=(0,), n_screen=4, top_k=3)



def _count(name: str, value: Any, allow_none: bool = False, flag: str | None = None) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}"
                         f"{f' ({flag})' if flag else ''}.")


def check_run_args(seeds: Sequence[int], n_train: int, n_val: int, n_test: int | None,
                   max_new_tokens: int, batch_size: int, gen_batch_size: int,
                   n_screen: int | None, top_k: int | None,
                   selection: SelectionConfig | None) -> None:
    """Refuse any unusable run argument before any model work (nothing is replaced)."""
    if isinstance(seeds, (str, int)) or not seeds:
        raise InputError(f"seeds must be a non-empty list of ints, e.g. (0, 1); got {seeds!r}.")
    if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise InputError(f"seeds must be ints, got {list(seeds)}.")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds has repeats ({list(seeds)}); each seed must be distinct.")
    for name, value, none_ok, flag in (
            ("n_train", n_train, False, "--n-train"), ("n_val", n_val, False, "--n-val"),
            ("n_test", n_test, True, "--n-test"),
            ("max_new_tokens", max_new_tokens, False, "--max-new-tokens"),
            ("batch_size", batch_size, False, "--batch-size"),
            ("gen_batch_size", gen_batch_size, False, "--gen-batch-size"),
            ("n_screen", n_screen, True, None), ("top_k", top_k, True, None)):
        _count(name, value, none_ok, flag)
    if selection is not None:
        e = selection.sink_energy
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e < 1.0:
            raise InputError(f"sink_energy (--sink-energy) must be in [0, 1), got {e!r}; use 0 "
                             "for the paper's exact vectors.")
        for name in ("n_screen", "top_k", "n_random", "min_kept", "batch_size", "group"):
            _count(f"selection.{name}", getattr(selection, name))


def parse_run_args(argv: Sequence[str] | None = None,
                   description: str = "") -> tuple[argparse.Namespace, dict[str, Any]]:
    """The ``refusal-lens run`` options, and the ``run_pipeline`` keywords they give (only
    those the user set, or ``--fast``'s: a given value is used or refused, never replaced)."""
    p = argparse.ArgumentParser(
        prog="refusal-lens run", description=description,
        epilog="Stages are saved under --out as they finish; after an interruption, rerun the "
               "same command with --resume to continue from the last finished stage.")
    add_model_option(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory; must be new or empty unless --force or --resume "
                        "(default: runs/<model>-<date>-<time>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true",
                      help="empty --out (an earlier run's directory) first, then run")
    mode.add_argument("--resume", action="store_true",
                      help="continue the interrupted run in --out from its last finished stage "
                           "(the arguments must be the same as the first time)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="seeds: each draws its own train/val prompts and fits and selects its "
                        "own direction; test prompts are the same for all (default: 0 1)")
    p.add_argument("--n-train", type=int, default=None, metavar="N",
                   help="training prompts per side for fitting (default: 128; --fast: 32)")
    p.add_argument("--n-val", type=int, default=None, metavar="N",
                   help="validation prompts per side for selection (default: 32; --fast: 8)")
    p.add_argument("--n-test", type=int, default=None, metavar="N",
                   help="held-out test prompts per side (default: 100; --fast: 16)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="greedy tokens generated per completion (default: 64; --fast: 24)")
    p.add_argument("--sink-energy", type=float, default=None, metavar="E",
                   help="project candidates off the first token's residual subspace holding "
                        "this fraction of its energy, in [0, 1) (default: 0.95; 0 = the "
                        "paper's exact vectors)")
    p.add_argument("--selection-rule", choices=SELECTION_RULES, default=None,
                   help="how the direction is chosen among candidates passing the filters: "
                        "'joint' (best worse-of-two rank by bypass and induce scores on the "
                        "validation prompts; default) or 'paper' (lowest bypass score)")
    add_saved_direction_option(p, "skip fitting and selection and evaluate this one")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="prompts per forward pass when fitting and scoring (default: 32)")
    p.add_argument("--gen-batch-size", type=int, default=None, metavar="N",
                   help="prompts per generation batch (default: 64)")
    p.add_argument("--fast", action="store_true",
                   help="small counts (32 train, 8 val, 16 test prompts, 24 tokens, seed 0), "
                        "for a smoke test; explicit options override them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_placement_args(p)
    a, placement = parse_with_placement(p, argv)
    kw: dict[str, Any] = dict(FAST) if a.fast else {}
    for name in ("seeds", "n_train", "n_val", "n_test", "max_new_tokens", "batch_size",
                 "gen_batch_size", "direction"):
        value = getattr(a, name)
        if value is not None:  # given values are used (or refused), never replaced
            kw[name] = tuple(value) if name == "seeds" else value
    if a.sink_energy is not None or a.selection_rule is not None:
        from .selection import SelectionConfig

        given = {k: v for k, v in (("sink_energy", a.sink_energy), ("rule", a.selection_rule))
                 if v is not None}
        kw["selection"] = SelectionConfig(batch_size=kw.get("batch_size", 32), **given)
    kw["placement"] = placement
    return a, kw
