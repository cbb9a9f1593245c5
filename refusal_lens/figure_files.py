"""Writing figures: ``<stem>.html`` always, ``<stem>.png`` through kaleido and Chromium when
they are there (else one line saying exactly what is missing)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import plotly.graph_objects as go

from .paths import atomic_write_bytes, atomic_write_text

__all__ = ["save_figure", "static_export_problem", "PNG_WIDTH", "PNG_HEIGHT"]

_STATIC_PROBLEM: str | None = None  # why static (PNG) export does not work; probed once
_STATIC_PROBED = False
#: PNG size when a figure sets no width / height (HTML figures are responsive).
PNG_WIDTH, PNG_HEIGHT = 1200, 500


def static_export_problem() -> str | None:
    """Why PNG export cannot work here (one line naming what is missing), or ``None``.

    PNG export uses kaleido >= 1, which drives a Chrome / Chromium it finds on ``PATH`` (the
    Debian package ``chromium``) or at ``BROWSER_PATH``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        kaleido_version = version("kaleido")
    except PackageNotFoundError:
        return ("the Python package kaleido is not installed (pip install 'kaleido>=1'; "
                "`make setup` installs it)")
    major = kaleido_version.split(".")[0]
    if not major.isdigit() or int(major) < 1:
        return (f"kaleido {kaleido_version} is installed; PNG export needs kaleido >= 1 "
                "(pip install 'kaleido>=1')")
    try:
        from choreographer.browsers.chromium import Chromium

        browser = Chromium.find_browser(skip_local=False)
    except Exception as err:  # an API change in choreographer: let the export itself decide
        return None if not isinstance(err, ImportError) else f"choreographer is missing ({err})"
    if browser and os.access(browser, os.X_OK):
        return None
    where = (f"BROWSER_PATH={os.environ['BROWSER_PATH']} is not an executable"
             if os.environ.get("BROWSER_PATH") else "none on PATH")
    return (f"kaleido found no Chrome/Chromium browser ({where}; install the Debian package "
            "`chromium` - `make setup` does where apt-get exists - or set BROWSER_PATH to a "
            "Chrome binary)")


def _start_renderer() -> None:
    """Keep one browser open for every PNG of this process (instead of one per figure)."""
    import atexit

    import kaleido

    if hasattr(kaleido, "start_sync_server"):
        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)


def _say(err: BaseException) -> str:
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else repr(err)


def save_figure(fig: go.Figure, path_stem: str | Path, png: bool = True) -> list[Path]:
    """Write ``<stem>.html`` always, and ``<stem>.png`` when static export works.

    The HTML loads ``plotly.min.js`` from its own folder (written there once, from the installed
    plotly), so it works offline without embedding 4 MB of JavaScript in every figure. A figure
    without a fixed width fills the browser window; its PNG is :data:`PNG_WIDTH` wide.

    PNG export needs kaleido >= 1 and a Chrome/Chromium (see :func:`static_export_problem`);
    without them the PNG is skipped with one line on stderr saying what is missing. Returns the
    written paths.
    """
    global _STATIC_PROBLEM, _STATIC_PROBED
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".html", ".png") else stem
    js = stem.parent / "plotly.min.js"
    if not js.is_file():
        from plotly.offline import get_plotlyjs

        atomic_write_text(js, get_plotlyjs())
    out = [atomic_write_text(stem.with_suffix(".html"), fig.to_html(
        include_plotlyjs="directory", full_html=True, config={"responsive": True}))]
    if not png:
        return out
    if not _STATIC_PROBED:
        _STATIC_PROBED, _STATIC_PROBLEM = True, static_export_problem()
        if _STATIC_PROBLEM:
            print(f"[refusal_lens] PNG export skipped: {_STATIC_PROBLEM}; HTML written.",
                  file=sys.stderr)
        else:
            _start_renderer()
    if _STATIC_PROBLEM:
        return out
    try:
        with warnings.catch_warnings():  # plotly notes that a running kaleido server is reused
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            data = fig.to_image(format="png", scale=2, width=fig.layout.width or PNG_WIDTH,
                                height=fig.layout.height or PNG_HEIGHT)
    except Exception as err:  # the browser failed to start or to render
        _STATIC_PROBLEM = f"kaleido could not render ({_say(err)})"
        print(f"[refusal_lens] PNG export skipped: {_STATIC_PROBLEM}; HTML written.",
              file=sys.stderr)
        return out
    out.append(atomic_write_bytes(stem.with_suffix(".png"), data))
    return out
