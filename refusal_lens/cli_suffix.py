"""``refusal-lens suffix search|random``: options parsed here, the work done by
:mod:`refusal_lens.gcg` (the search) and :mod:`refusal_lens.suffixes` (random suffixes).

:func:`add_search_options` and :func:`search_config` are the one definition of a search's
settings on a command line: ``analyses/suffix_search.py`` (which writes the shipped suffix)
uses them too, so both take the same options with the same defaults (:class:`GCGConfig`'s).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from .cliargs import HelpFormatter, add_model_option
from .cliargs import parser as _parser
from .configs import GCGConfig

#: Refused harmful training prompts a search optimises over, unless ``--n-prompts`` says.
N_PROMPTS = 4


def add_search_options(s: argparse.ArgumentParser) -> None:
    """The GCG search's options (defaults: :class:`GCGConfig` and :data:`N_PROMPTS`)."""
    g = GCGConfig()
    s.add_argument("--n-prompts", type=int, default=N_PROMPTS, metavar="N",
                   help="refused harmful training prompts to optimise over")
    s.add_argument("--steps", type=int, default=g.steps, help="search steps")
    s.add_argument("--suffix-len", type=int, default=g.n_tokens, metavar="TOKENS",
                   help="suffix length in tokens")
    s.add_argument("--topk", type=int, default=g.topk, metavar="K",
                   help="candidate tokens per position (largest negative gradient)")
    s.add_argument("--batch", type=int, default=g.batch, metavar="N",
                   help="candidate suffixes scored per step")
    s.add_argument("--seed", type=int, default=g.seed,
                   help="seed of the initial suffix and sampling")
    s.add_argument("--target", default=g.target, metavar="TEXT",
                   help="compliant answer opening whose cross-entropy is minimised")
    s.add_argument("--refusal-weight", type=float, default=g.refusal_weight, metavar="W",
                   help="weight of the refusal-token log-odds term (0 = target loss only)")
    s.add_argument("--no-early-stop", action="store_true",
                   help="run all steps even when every prompt already complies")
    s.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="stop the search after this many minutes (default: no limit)")


def search_config(args: argparse.Namespace, **extra: Any) -> GCGConfig:
    """The :class:`GCGConfig` that options added by :func:`add_search_options` describe
    (``extra``: further fields, e.g. ``init``)."""
    return GCGConfig(
        n_tokens=args.suffix_len, steps=args.steps, topk=args.topk, batch=args.batch,
        target=args.target, refusal_weight=args.refusal_weight, seed=args.seed,
        early_stop=not args.no_early_stop,
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, **extra)


def suffix_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens suffix search|random``."""
    p = _parser("refusal-lens suffix", "Adversarial suffixes: a GCG search for one universal "
                "suffix that makes the model comply, and random suffixes as controls.")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = dict(formatter_class=HelpFormatter)
    g = GCGConfig()  # the search's defaults
    s = sub.add_parser("search", help="GCG search of a universal suffix on harmful train prompts",
                       description="Greedy coordinate gradient (GCG) search of one universal "
                                   "suffix over harmful training prompts the model refuses.", **fmt)
    add_model_option(s)
    add_search_options(s)
    s.add_argument("--out", default=None, metavar="FILE",
                   help="write the result as JSON here (default: print it)")
    r = sub.add_parser("random", help="a random suffix from the same filtered vocabulary",
                       description="Print a random suffix drawn from the vocabulary GCG "
                                   "searches (the control for an adversarial suffix).", **fmt)
    add_model_option(r)
    r.add_argument("--suffix-len", type=int, default=g.n_tokens, metavar="TOKENS",
                   help="suffix length in tokens")
    r.add_argument("--seed", type=int, default=g.seed, help="random seed")
    args = p.parse_args(argv)
    from . import suffixes
    from .gcg import gcg_search
    from .model import load_model

    model = load_model(args.model)
    if args.cmd == "random":
        print(suffixes.random_suffix(model, args.suffix_len, args.seed))
        return 0
    if args.model == "synthetic":
        pool = list(model.info["synthetic"].harmful)
    else:
        from .datasets import load_splits

        pool = load_splits(seed=0).harmful_train
    prompts = suffixes.refused_prompts(model, pool, args.n_prompts)
    res = gcg_search(model, prompts, search_config(args)).to_dict()
    res["command"] = "refusal-lens suffix " + " ".join(argv or [])
    text = json.dumps(res, indent=2)
    if args.out:
        from .paths import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"suffix {res['suffix']!r} (loss {res['loss']:.3f}) -> {args.out}")
    else:
        print(text)
    return 0
