"""The ``refusal-lens`` command line: argument routing only; the work is done by the library."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

# subcommand -> (module, function taking argv and returning an exit code, help line)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("refusal_lens.pipeline", "run_cli",
            "the main job: extract, select, evaluate and report the refusal direction"),
    "organism": ("refusal_lens.organism", "organism_cli",
                 "train or evaluate the refusal organism (the embedded safety fine-tune)"),
    "suffix": ("refusal_lens.suffixes", "suffix_cli",
               "search adversarial (GCG) suffixes and make random ones"),
    "export": ("refusal_lens.orthogonalize", "export_cli",
               "write a weight-orthogonalized model as a Hugging Face directory"),
    "sweep": ("refusal_lens.sweeps", "sweep_cli",
              "refusal and capability against ablation strength and addition coefficient"),
    "data": ("refusal_lens.cli", "data_cli", "fetch the instruction datasets into the cache"),
    "info": ("refusal_lens.cli", "info_cli", "load a model and print its summary"),
}


def data_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens data fetch [--force]``."""
    from .datasets import fetch_main

    argv = list(argv or [])
    if not argv or argv[0] != "fetch":
        print("usage: refusal-lens data fetch [--force] [--archive-dir DIR]", file=sys.stderr)
        return 2
    return fetch_main(argv[1:])


def info_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens info [--model SPEC]``: load a model and print what it is."""
    parser = argparse.ArgumentParser(prog="refusal-lens info", description=info_cli.__doc__)
    parser.add_argument("--model", default="embedded", help="model spec (default: embedded)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from .model import load_model

    print(load_model(args.model, device=args.device).summary())
    return 0


def _resolve(name: str) -> Callable[[list[str]], int]:
    module, func, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refusal-lens`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="refusal-lens",
        description="Find, test and explain the refusal direction of chat models.",
        epilog="Run `refusal-lens <command> --help` for a command's options.",
    )
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="command",
                        help="; ".join(f"{k}: {v[2]}" for k, v in SUBCOMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    try:
        return int(_resolve(args.command)(argv[1:]) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"refusal-lens {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
