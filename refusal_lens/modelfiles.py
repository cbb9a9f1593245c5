"""Checks of a Hugging Face model directory before it is loaded, and clear loading errors.

``load_model`` calls :func:`check_model_dir` before handing a directory to ``transformers`` and
:func:`load_error` to explain anything ``from_pretrained`` still raises, so a broken directory
gives one line that names the file and the fix instead of a deep traceback (or, for a config
without ``model_type``, a misleading request to install a tokenizer package).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import ModelLoadError
from .paths import cache_dir

__all__ = ["check_model_dir", "load_error"]


def _fix(path: Path) -> str:
    """How to repair files under ``path``: rebuild a cached copy, else restore the files."""
    try:
        cached = Path(path).resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        cached = False
    if cached:
        return (f"it is in the refusal_lens cache: delete {path} and load again to rebuild it "
                "(or `refusal-lens data fetch` for datasets).")
    return "re-download or re-save the model there."


def check_model_dir(path: str | Path) -> None:
    """Refuse a directory whose ``config.json`` is not valid JSON or has no ``model_type``, or
    whose ``*.safetensors`` files are shorter than their headers say (truncated)."""
    path = Path(path)
    config = path / "config.json"
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{config} is not valid JSON ({err}); {_fix(path)}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{config} holds a {type(data).__name__}, not a JSON object; "
                             f"{_fix(path)}")
    if not data.get("model_type"):
        raise ModelLoadError(
            f"{config} has no \"model_type\", so transformers cannot tell which architecture and "
            "tokenizer to build; add it (e.g. \"model_type\": \"llama\", as in the model's "
            f"original config) or {_fix(path)}")
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights, path)


def _check_safetensors(file: Path, root: Path) -> None:
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (struct.error, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{file} is truncated or not a safetensors file ({err}); "
                             f"{_fix(root)}") from err
    if size < 8 + n + end:
        raise ModelLoadError(f"{file} is truncated ({size} of {8 + n + end} bytes); "
                             f"{_fix(root)}")


def load_error(path: str | Path, err: Exception) -> ModelLoadError:
    """A :class:`ModelLoadError` for what ``from_pretrained`` raised on ``path``."""
    return ModelLoadError(f"Could not load the model in {path} ({type(err).__name__}: {err}); "
                          f"{_fix(Path(path))}")
