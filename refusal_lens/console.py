"""What a run shows while it works and when it ends.

* :func:`progress_bar`: a tqdm bar whose description starts with the stage it belongs to, e.g.
  ``seed 0 · ablation · harmful · generating 100 prompts``. It is a widget only where one can
  render (a Jupyter kernel with ipywidgets); elsewhere, notebooks included, a text bar (tqdm's
  own auto-choice warns "IProgress not found" once per bar when ipywidgets is missing).
* :func:`stage` / :func:`step`: label the work inside them; a finished :func:`step` also
  advances the overall bar of the enclosing :func:`tracked` call, which :func:`plan` opens with
  the number of steps (so it shows steps done, elapsed time and time left).
* :func:`run_summary`: the closing text of ``refusal-lens run``: files written and main numbers.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

__all__ = ["progress_bar", "stage", "step", "tracked", "plan", "note", "run_summary"]

_labels: ContextVar[tuple[str, ...]] = ContextVar("refusal_lens_stage", default=())
_runs: ContextVar["_Overall | None"] = ContextVar("refusal_lens_run", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar_class() -> type:
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def label() -> str:
    """The current stage, e.g. ``"seed 0 · ablation · harmful"`` (empty outside any stage)."""
    return " · ".join(_labels.get())


def progress_bar(iterable: Iterable | None = None, desc: str = "", **kwargs: Any):
    """A tqdm bar (same arguments) whose description is prefixed with the current stage."""
    here = label()
    desc = f"{here} · {desc}" if here and desc else here or desc
    if _in_notebook():  # text bars in a notebook: fewer redraws, each is an output message
        kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    return _bar_class()(iterable, desc=desc, **kwargs)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Label every bar opened inside (nested stages are joined with ``·``)."""
    token = _labels.set(_labels.get() + (name,))
    try:
        yield
    finally:
        _labels.reset(token)


@contextmanager
def step(name: str, weight: int = 1) -> Iterator[None]:
    """A stage that counts as ``weight`` steps of the overall bar, advanced when it completes
    (weigh a step by its expected time, in units of the other steps, for a truer time left)."""
    with stage(name):
        run = _runs.get()
        if run is not None:
            run.show(label())
        yield
        if run is not None:
            run.advance(weight)


class _Overall:
    """The overall bar of one tracked call (none until :func:`plan`)."""

    def __init__(self) -> None:
        self.bar = None

    def open(self, total: int, desc: str) -> None:
        self.close()
        self.bar = _bar_class()(total=total, desc=desc, unit="step", smoothing=0, leave=True,
                                dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} steps "
                                           "[{elapsed} elapsed, {remaining} left]{postfix}")

    def show(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("")
            self.bar.close()
            self.bar = None


def tracked(fn: F) -> F:
    """Decorator: the steps run inside ``fn`` feed one overall bar (opened by :func:`plan`
    inside ``fn``), closed when ``fn`` returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run = _Overall()
        token = _runs.set(run)
        try:
            return fn(*args, **kwargs)
        finally:
            run.close()
            _runs.reset(token)

    return wrapper  # type: ignore[return-value]


def note(text: str) -> None:
    """Show ``text`` beside the overall bar (work that is not a counted step)."""
    run = _runs.get()
    if run is not None:
        run.show(text)


def plan(total: int, desc: str, enabled: bool = True) -> None:
    """Open the overall bar of the enclosing :func:`tracked` call: ``total`` steps to come."""
    run = _runs.get()
    if run is not None and enabled:
        run.open(total, desc)


# --------------------------------------------------------------------------- summary
def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _num(x: Any, digits: int = 2) -> str:
    if isinstance(x, (int, float)) and math.isfinite(x):
        return f"{x:.{digits}f}"
    return "n/a"


def run_summary(report: dict[str, Any], out_dir: str | Path, since: float | None = None) -> str:
    """The closing text of a run: the files written under ``out_dir`` (modified at or after
    ``since``, a ``time.time()``; all files when ``None``) and the main numbers of ``report``
    (verdict, refusal rates with 95% intervals, the chosen direction per seed, run time)."""
    out = Path(out_dir)
    files = sorted(p for p in out.rglob("*") if p.is_file()
                   and (since is None or p.stat().st_mtime >= since - 1))
    lines = [f"Wrote {len(files)} file(s) to {out}/:"]
    width = max((len(str(p.relative_to(out))) for p in files), default=0)
    lines += [f"  {str(p.relative_to(out)):<{width}}  {_size(p.stat().st_size):>9}" for p in files]
    rates = report.get("rates", {})
    if rates:
        w = max(len(k) for k in rates)
        lines += ["", f"  {'arm':<{w}}  rate   95% CI        n",
                  *(f"  {k:<{w}}  {_num(v.get('rate'))}   [{_num(v.get('ci_low'))}, "
                    f"{_num(v.get('ci_high'))}]  {v.get('n', '')}" for k, v in rates.items())]
    dirs = report.get("directions", {})
    if dirs:
        lines += ["", "Direction: " + "; ".join(
            f"seed {s} layer {d.get('layer')} position {d.get('position')}"
            for s, d in dirs.items())]
    total = report.get("timing", {}).get("total_s")
    lines += ["", f"Verdict: {report.get('verdict', 'n/a')}"
              + (f"  (run time {total / 60:.1f} min)" if isinstance(total, (int, float)) else "")]
    main = next((out / n for n in ("report.html", "report.md") if (out / n).is_file()), None)
    if main is not None:
        lines.append(f"Report: {main}")
    return "\n".join(lines)
