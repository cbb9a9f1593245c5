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
from typing import Any

from .errors import ModelLoadError
from .paths import cache_dir

__all__ = ["check_model_dir", "load_error", "load_hf_dir", "prepare_tokenizer"]


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


def prepare_tokenizer(tokenizer: Any) -> None:
    """Pad on the left (prompts end where generation starts), with eos as pad if none is set."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_hf_dir(path: Path | str, dtype: Any = None, trust_remote_code: bool = False,
                **kw: Any) -> tuple[Any, Any]:
    """Model (eager attention, ``dtype``, default float32) and left-padding tokenizer of a
    Hugging Face directory (or hub id), checked first; keyword arguments (``device_map``,
    ``max_memory``, ``offload_folder``: see
    :meth:`refusal_lens.placement.Placement.from_pretrained_kwargs`) go to ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32 if dtype is None else dtype, attn_implementation="eager",
            trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError, RuntimeError) as err:  # corrupt or incomplete files
        raise load_error(path, err) from err
    prepare_tokenizer(tok)
    model.eval()
    return model, tok
