"""The refusal directions shipped with the package: one per shipped model, from its default run.

``refusal_lens/data/directions/<spec>.safetensors`` (with ``<spec>.json`` mirroring its header)
holds the direction that a default ``refusal-lens run --model <spec>`` chose for its first seed.
How it was made is in ``meta["shipped"]``: the run's selection rule, its dataset hash, its verdict
and the command that produced it; layer, position and seed are the direction's own fields.
:func:`shipped_direction` loads one (``rl.shipped_direction("embedded")``), so a notebook can
study a model's direction without rerunning the pipeline; :func:`ship_direction` writes one
from a finished run directory.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .directions import Direction
from .errors import InputError

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["shipped_direction", "shipped_specs", "ship_direction", "SHIPPED_DIR"]

#: Where the shipped directions live inside the package.
SHIPPED_DIR = "data/directions"


def _folder() -> Path:
    return Path(str(files("refusal_lens") / SHIPPED_DIR))


def shipped_specs() -> list[str]:
    """The model specs that have a shipped direction."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def shipped_direction(spec: str = "embedded", model: "LensModel | None" = None) -> Direction:
    """The shipped direction of model ``spec`` (checked against ``model``'s width if given)."""
    if spec not in shipped_specs():
        raise InputError(f"No shipped direction for {spec!r}; shipped: {shipped_specs()}. "
                              "Fit one with `refusal-lens run --model SPEC`.")
    return Direction.load(_folder() / spec, model)


def ship_direction(run_dir: str | Path, spec: str, command: str,
                   folder: str | Path | None = None) -> Path:
    """Copy a finished run's first-seed direction into the shipped set as ``<spec>``.

    ``command`` is the command line that produced ``run_dir`` (recorded with the direction).
    The run must have finished (its ``report.json`` exists) and ran on model ``spec`` (the
    spec its configuration records; another one is refused).
    """
    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise InputError(f"{run_dir} has no report.json: ship a direction only from a "
                              "finished `refusal-lens run`.")
    report: dict[str, Any] = json.loads(report_path.read_text())
    direction = Direction.load(run_dir / "direction")
    ran_on = report["config"]["run"]["model"]
    if ran_on != spec:
        raise InputError(f"{run_dir} is a run of model {ran_on!r}, not {spec!r}.")
    seed = str(direction.seed)
    direction.meta["shipped"] = {
        "spec": spec, "command": command, "verdict": report["verdict"],
        "selection_rule": direction.meta.get("selection_rule"),
        "rule_text": report["selection"][seed]["rule"], "seeds_in_run": report["config"]["seeds"],
        "created": report["created"], "dataset_hash": direction.dataset_hash,
        "environment": report.get("environment")}
    out = Path(folder) if folder is not None else _folder()
    out.mkdir(parents=True, exist_ok=True)
    st, _ = direction.save(out / spec)
    return st
