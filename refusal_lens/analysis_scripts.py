"""What the scripts in ``analyses/`` share, so that each states only its own measurement.

- :func:`analysis_parser` and the ``add_*`` functions: the options the scripts have in common,
  declared once and worded the same (``--model`` is :data:`refusal_lens.cliargs.MODEL_HELP`);
  ``REFUSAL_LENS_FAST=1`` gives the small smoke-test counts as defaults.
- :func:`render_or_measure`: a script whose ``<out>.json`` exists only re-renders its figure
  from that JSON, without loading a model; ``--rerun`` (or no JSON yet) measures first.
- :class:`Measurement`: the summary a script measures, saved atomically after every stage (a
  stopped run keeps what it finished), with each stage's seconds in ``summary["timing"]``;
  :meth:`Measurement.measure_seeds` is the per-seed loop.
- :func:`load_saved_directions` (and :func:`rule_directions`, :func:`suffix_setup` built on
  it): saved directions checked (the file exists and reads, it was fitted on the model
  ``--model`` names) before the model is loaded, so bad input fails at once with its fix
  instead of after minutes of loading.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from .cliargs import HelpFormatter, add_model_option, add_saved_direction_option
from .configs import SELECTION_RULES
from .errors import DirectionError, InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .directions import Direction
    from .model import LensModel
    from .traces import SuffixAnalysis

__all__ = ["fast", "analysis_parser", "add_count", "add_tokens_option", "add_fit_counts",
           "add_suffix_analysis_options", "read_json", "write_figure", "sweep_caption",
           "render_or_measure", "Measurement", "load_saved_directions",
           "load_model_for", "rule_directions", "rule_measurement", "suffix_setup"]

K = TypeVar("K")

#: Where ``analyses/selection_rules.py`` saves the directions the later analyses read.
RULE_DIRS = "runs/selection_rules"


def fast() -> bool:
    """Whether ``REFUSAL_LENS_FAST=1`` asks for the small smoke-test counts."""
    return os.environ.get("REFUSAL_LENS_FAST") == "1"


# --------------------------------------------------------------------------- options
def analysis_parser(doc: str, script: str, out: str | None = None, *, model: bool = True,
                    rerun: bool = True, seeds: bool = False,
                    rule_dirs: bool = False) -> argparse.ArgumentParser:
    """The parser of the script ``script`` (its ``__file__``), described by the first paragraph
    of its docstring ``doc`` (as plain text). Options: ``--model`` (if ``model``); ``--out STEM`` (default ``out``) and,
    if ``rerun``, ``--rerun``; ``--seeds`` (if ``seeds``); ``--rule`` and ``--dirs``, the
    directions ``analyses/selection_rules.py`` saved (if ``rule_dirs``)."""
    p = argparse.ArgumentParser(prog=f"python analyses/{Path(script).name}",
                                description=doc.strip().split("\n\n")[0].replace("``", ""),
                                formatter_class=HelpFormatter)
    if model:
        add_model_option(p)
    if out is not None:
        p.add_argument("--out", default=out, metavar="STEM",
                       help="output stem: the figure STEM.html (and STEM.png where a browser "
                            "for static export is installed) and what was measured, STEM.json")
        if rerun:
            p.add_argument("--rerun", action="store_true",
                           help="measure even if STEM.json exists (otherwise the figure is only "
                                "re-rendered from it, and no model is loaded)")
    if seeds:
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="SEED",
                       help="seeds: each has its own train/val prompts and its own direction")
    if rule_dirs:
        p.add_argument("--rule", choices=SELECTION_RULES, default=SELECTION_RULES[0],
                       help="the selection rule whose saved directions are analysed")
        p.add_argument("--dirs", default=RULE_DIRS, metavar="DIR",
                       help="folder of the directions analyses/selection_rules.py saved "
                            "(direction-<rule>-seed<s>.safetensors)")
    return p


def add_count(parser: argparse.ArgumentParser, flag: str, small: int, full: int,
              help: str) -> None:
    """An integer count option: ``full`` by default, ``small`` with ``REFUSAL_LENS_FAST=1``."""
    parser.add_argument(flag, type=int, default=small if fast() else full, metavar="N",
                        help=help)


def add_tokens_option(parser: argparse.ArgumentParser, small: int, full: int,
                      what: str = "greedy tokens generated per completion") -> None:
    """``--max-new-tokens`` (alias ``--tokens``), as ``args.max_new_tokens``."""
    parser.add_argument("--max-new-tokens", "--tokens", dest="max_new_tokens", type=int,
                        default=small if fast() else full, metavar="N", help=what)


def add_fit_counts(parser: argparse.ArgumentParser) -> None:
    """``--n-train`` and ``--n-val``: the pipeline's prompt counts per side and seed."""
    add_count(parser, "--n-train", 32, 128, "training prompts per side for fitting")
    add_count(parser, "--n-val", 8, 32, "validation prompts per side for selection")


def add_suffix_analysis_options(parser: argparse.ArgumentParser) -> None:
    """``--n`` and ``--direction`` of the suffix analyses (:func:`suffix_setup`)."""
    add_count(parser, "--n", 16, 100, "held-out prompts per condition")
    add_saved_direction_option(parser, "the refusal direction analysed (default: the direction "
                                       "shipped for --model)")


# --------------------------------------------------------------------------- figures
def read_json(path: str | Path, fix: str) -> dict:
    """The JSON object in ``path``; a missing or unreadable file is an error naming ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No {path}: {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}): {fix}") from err


def write_figure(fig: "go.Figure", out: str | Path) -> None:
    """Write ``fig`` as ``<out>.html`` (and ``.png``), saying where on stderr."""
    from .figure_files import save_figure

    for path in save_figure(fig, out):
        print(f"wrote {path}", file=sys.stderr)


def sweep_caption(result: dict) -> str:
    """The prompts and tokens behind one seed's sweep result, as figure titles state them."""
    return (f"{result['n_harmful']} harmful + {result['n_harmless']} harmless held-out test "
            f"prompts, {result['max_new_tokens']} greedy tokens; 95% CI")


def render_or_measure(args: argparse.Namespace,
                      measure: Callable[[argparse.Namespace], dict],
                      figure: Callable[[dict, argparse.Namespace], "go.Figure"]) -> dict:
    """Draw ``figure(summary, args)`` into ``args.out``: ``summary`` is ``<out>.json`` when it
    exists and ``--rerun`` is not given (nothing is measured and no model is loaded), else what
    ``measure(args)`` returns (it writes that JSON). Returns the summary."""
    saved = Path(args.out + ".json")
    summary = (read_json(saved, "delete it or pass --rerun to measure again")
               if saved.is_file() and not args.rerun else measure(args))
    write_figure(figure(summary, args), args.out)
    return summary


class Measurement:
    """The summary a script is measuring, kept in ``<out>.json``.

    :meth:`save` writes it atomically, so a run stopped part way leaves the stages it finished;
    :meth:`stage` times a stage into ``summary["timing"]`` (``<stage>_s``, and ``total_s``
    since the measurement began), so the JSON says where the time went.
    """

    def __init__(self, out: str | Path, **summary: Any) -> None:
        self.path = Path(f"{out}.json")
        self.summary: dict[str, Any] = dict(summary)
        self.timing: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (recorded when it finishes)."""
        start = time.perf_counter()
        yield
        self.timing[f"{name}_s"] = time.perf_counter() - start

    def save(self) -> dict:
        """Write the summary (with its timing so far) and return it."""
        from .paths import atomic_write_text
        from .selection_results import dumps

        self.timing["total_s"] = time.perf_counter() - self._start
        self.summary["timing"] = self.timing
        atomic_write_text(self.path, dumps(self.summary))
        return self.summary

    def load_model(self, spec: str, directions: Iterable["Direction"] = ()) -> "LensModel":
        """:func:`load_model_for`, timed as stage ``load_model``."""
        with self.stage("load_model"):
            return load_model_for(spec, directions)

    def measure_seeds(self, seeds: Sequence[int], measure_one: Callable[[int], dict],
                      key: str = "seeds") -> dict:
        """Append ``measure_one(seed)`` to ``summary[key]`` for each seed in turn, timed as
        stage ``seed<s>``, saving after each seed; return the summary."""
        results = self.summary.setdefault(key, [])
        for seed in seeds:
            with self.stage(f"seed{seed}"):
                results.append(measure_one(seed))
            self.save()
        return self.summary


# --------------------------------------------------------------------------- directions
def load_saved_directions(paths: Mapping[K, str | Path], spec: str,
                          fix: str) -> dict[K, "Direction"]:
    """The direction saved at each of ``paths``, checked before any model loads: the file
    exists, reads as a saved direction, and was fitted on the model ``spec`` names. A failing
    check raises :class:`refusal_lens.errors.DirectionError` ending with ``fix`` (how to make
    the right files)."""
    from .directions import Direction

    from .model import model_name

    want = model_name(spec)
    out: dict[K, Direction] = {}
    for key, path in paths.items():
        try:
            d = Direction.load(path)
        except (FileNotFoundError, DirectionError) as err:
            raise DirectionError(f"{err} Fix: {fix}") from err
        if d.model and d.model != want:
            raise DirectionError(f"{path} was fitted on {d.model!r}, but --model {spec!r} is "
                                 f"{want!r}. Fix: {fix}")
        out[key] = d
    return out


def load_model_for(spec: str, directions: Iterable["Direction"] = ()) -> "LensModel":
    """Load model ``spec`` and check that each of ``directions`` (read beforehand with
    :func:`load_saved_directions`) fits its residual stream (width, layer)."""
    from .model import load_model

    model = load_model(spec)
    for d in directions:
        d.check_width(model)
    return model


def rule_directions(spec: str, dirs: str | Path, rule: str,
                    seeds: Sequence[int]) -> dict[int, "Direction"]:
    """Each seed's ``rule`` direction saved in ``dirs`` by ``analyses/selection_rules.py``,
    checked by :func:`load_saved_directions` (before the model loads)."""
    from .selection_results import rule_direction_path

    fix = (f"`python analyses/selection_rules.py --model {spec} --seeds "
           f"{' '.join(map(str, seeds))} --dirs {dirs}` writes them, or pass --dirs and "
           "--model of an earlier run.")
    return load_saved_directions({s: rule_direction_path(dirs, rule, s) for s in seeds}, spec,
                                 fix)


def rule_measurement(args: argparse.Namespace
                     ) -> tuple[Measurement, "LensModel", dict[int, "Direction"]]:
    """The start of a measurement of each seed's saved ``args.rule`` direction: the directions
    (:func:`rule_directions`, checked first), then the model ``args.model``, and a
    :class:`Measurement` into ``args.out`` whose summary names the model and rule and has an
    empty ``seeds`` list for :meth:`Measurement.measure_seeds`."""
    directions = rule_directions(args.model, args.dirs, args.rule, args.seeds)
    m = Measurement(args.out)
    model = m.load_model(args.model, directions.values())
    m.summary |= {"model": model.name, "rule": args.rule, "seeds": []}
    return m, model, directions


def suffix_setup(args: argparse.Namespace
                 ) -> tuple[Measurement, "LensModel", "SuffixAnalysis"]:
    """A :class:`Measurement` into ``args.out``, the model ``args.model`` and its suffix-analysis
    setup (``args.n`` prompts; the direction ``args.direction`` or the shipped one; see
    :func:`refusal_lens.traces.suffix_analysis`). The shipped suffix and the direction are
    checked before the model loads."""
    from .shipped import shipped_direction
    from .suffixes import shipped_suffix
    from .traces import suffix_analysis

    try:
        shipped_suffix(args.model)
    except KeyError as err:
        raise InputError(f"{err.args[0]} Search one with `python analyses/suffix_search.py "
                         f"--search --model {args.model}`.") from err
    direction = (shipped_direction(args.model) if args.direction is None else
                 load_saved_directions({0: args.direction}, args.model,
                                       "pass a direction fitted on --model, or leave --direction "
                                       "out for the shipped one.")[0])
    m = Measurement(args.out)
    model = m.load_model(args.model, [direction])
    with m.stage("setup"):
        setup = suffix_analysis(model, args.n, direction=args.direction, model_key=args.model)
    return m, model, setup
