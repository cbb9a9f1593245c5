"""Export a (weight-orthogonalized) model: a plain Hugging Face directory or a GGUF file, each
with a model card (``README.md``) and the edit's record (``refusal_lens.json``).

The Hugging Face directory loads with plain ``AutoModelForCausalLM`` / ``AutoTokenizer`` with
no missing or unexpected keys (tensors the TransformerLens bridge added are dropped). Its config
and tokenizer config also carry the keys transformers 4.x reads (``rope_theta`` beside v5's
``rope_parameters``, a ``tokenizer_class`` 4.x knows), so older versions load the same model.
The GGUF directory holds one ``.gguf`` file (see :mod:`refusal_lens.gguf_writer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .configs import EXPORT_FORMATS as FORMATS
from .configs import GGUF_TYPES, HF_DTYPES
from .gguf_writer import check_gguf_support, write_gguf
from .paths import atomic_directory

__all__ = ["EXPORT_META", "export_hf", "export_gguf", "read_export_meta",
           "describe_export", "load_effect", "export_model"]

EXPORT_META = "refusal_lens.json"
CARD = "README.md"
# Load-time flags transformers 5 writes into tokenizer_config.json; they describe the machine
# that saved it, not the tokenizer.
_LOAD_FLAGS = ("is_local", "local_files_only")


# What a LensModel's info says about where its weights came from (see model.load_model).
_SOURCE_KEYS = ("spec", "path", "gguf", "gguf_sha256", "organism")


class ExportError(ValueError):
    """An export request that cannot be honoured as given."""


def _edit_meta(model: Any, fmt: str, dtype: str, effect: dict | None) -> dict[str, Any]:
    info = model.info
    meta: dict[str, Any] = {"model": model.name, "format": fmt, "dtype": dtype,
                            "base_model": info.get("orthogonalized_from", model.name)}
    source = {k: info[k] for k in _SOURCE_KEYS if isinstance(info.get(k), (str, bool))}
    if source:
        meta["base_source"] = source
    for key in ("orthogonalized", "writers"):
        if key in info:
            meta[key] = info[key]
    if effect is not None:
        meta["effect"] = effect
    return meta


def _fix_config(path: Path, attn: str | None) -> None:
    """Name the eager attention the logits were computed with, and write ``rope_theta`` (what
    transformers 4.x reads) beside ``rope_parameters`` (5.x), so both build the same rotary."""
    config = json.loads(path.read_text())
    config.setdefault("attn_implementation", attn or "eager")
    for cfg in (config, config.get("text_config") or {}):
        rope = cfg.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            cfg.setdefault("rope_theta", rope["rope_theta"])
            extra = {k: v for k, v in rope.items() if k != "rope_theta"}
            if extra.get("rope_type", "default") != "default":
                cfg.setdefault("rope_scaling", extra)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _fix_tokenizer_config(path: Path) -> None:
    """Use the tokenizer class name and special-token key transformers 4.x also reads (5.x reads
    them as the same tokenizer)."""
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):  # 4.x reads the list as this key
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    for key in _LOAD_FLAGS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _check_dtype(fmt: str, dtype: str) -> None:
    allowed = HF_DTYPES if fmt == "hf" else GGUF_TYPES if fmt == "gguf" else None
    if allowed is None:
        raise ExportError(f"Unknown format {fmt!r}; use one of {FORMATS}.")
    if dtype not in allowed:
        raise ExportError(f"--dtype {dtype!r} is not available for --format {fmt}; "
                          f"use one of {', '.join(allowed)}.")


def export_hf(model: Any, out_dir: str | os.PathLike[str], force: bool = False,
              dtype: str = "fp32", effect: dict | None = None) -> Path:
    """Save ``model`` (weights in ``dtype``, config, tokenizer, model card) as a plain Hugging
    Face directory.

    Written to a temporary directory beside ``out_dir`` and renamed into place, so a failed
    export leaves nothing behind; an existing ``out_dir`` is replaced only with ``force``.
    ``effect`` (see :func:`load_effect`) is the measured effect to record in the card.
    ``config.json`` names the eager attention the logits were computed with. Saving holds a
    second copy of the weights in memory.
    """
    from .orthogonalize import _plain_copy

    _check_dtype("hf", dtype)
    with atomic_directory(out_dir, force) as tmp:
        hf = _plain_copy(model).to(getattr(torch, HF_DTYPES[dtype]))
        hf.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        _fix_config(tmp / "config.json", hf.config._attn_implementation)
        if (tmp / "tokenizer_config.json").is_file():
            _fix_tokenizer_config(tmp / "tokenizer_config.json")
        del hf
        meta = _edit_meta(model, "hf", dtype, effect)
        weights = sorted(p.name for p in tmp.glob("*.safetensors"))
        (tmp / CARD).write_text(model_card(meta, files=weights))
        if meta.get("orthogonalized"):
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out_dir).expanduser().absolute()


def gguf_name(model: Any, dtype: str) -> str:
    """File name of a GGUF export: ``<model name>-<TYPE>.gguf``."""
    return f"{model.name}-{GGUF_TYPES[dtype][0]}.gguf"


def export_gguf(model: Any, out_dir: str | os.PathLike[str], force: bool = False,
                dtype: str = "fp32", effect: dict | None = None) -> Path:
    """Write ``model`` as a directory holding one GGUF file (llama.cpp, Ollama, transformers'
    ``gguf_file=``), the model card and the edit's record. Atomic, like :func:`export_hf`."""
    from .orthogonalize import _plain_copy

    _check_dtype("gguf", dtype)
    check_gguf_support(model.hf_model.config, model.tokenizer, dtype)
    name = gguf_name(model, dtype)
    with atomic_directory(out_dir, force) as tmp:
        hf = _plain_copy(model)
        write_gguf(hf, model.tokenizer, tmp / name, dtype, name=model.name)
        del hf
        meta = _edit_meta(model, "gguf", dtype, effect)
        meta["file"] = name
        (tmp / CARD).write_text(model_card(meta, files=[name]))
        if meta.get("orthogonalized"):
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out_dir).expanduser().absolute()


def load_effect(report_path: str | os.PathLike[str], direction: Any, model_name: str) -> dict:
    """The measured effect of ``direction`` from a run's ``report.json``, checked to be about
    this model and this direction (same layer, position and norm)."""
    path = Path(report_path)
    if not path.is_file():
        raise FileNotFoundError(f"No report at {path}; pass the report.json of the run that "
                                "measured this direction (refusal-lens run writes it).")
    report = json.loads(path.read_text())
    if report.get("model") != model_name:
        raise ExportError(f"{path} measured {report.get('model')!r}, not {model_name!r}; pass "
                          "the report of a run on this model.")
    match = [s for s, d in (report.get("directions") or {}).items()
             if (d.get("layer"), d.get("position")) == (direction.layer, direction.position)
             and abs(d.get("norm", -1.0) - direction.norm) <= 1e-5 * max(1.0, direction.norm)]
    if not match:
        raise ExportError(f"{path} has no direction at layer {direction.layer}, position "
                          f"{direction.position} with norm {direction.norm:.6g}; pass the report "
                          "of the run that saved this direction.")
    return {"report": str(path.absolute()), "seeds": match, "verdict": report.get("verdict"),
            "rates": report.get("rates", {}), "capability": report.get("capability", {}),
            "data": report.get("data", {}).get("name")}


def read_export_meta(path: str | os.PathLike[str]) -> dict | None:
    """The edit recorded in an export directory (``refusal_lens.json``), or None."""
    meta = Path(path).expanduser() / EXPORT_META
    return json.loads(meta.read_text()) if meta.is_file() else None


def _v(value: Any) -> str:
    return "not recorded" if value in (None, "") else str(value)


def _fmt_rate(r: dict) -> str:
    return (f"{r['rate']:.3f} [{r.get('ci_low', float('nan')):.3f}, "
            f"{r.get('ci_high', float('nan')):.3f}] (n={r.get('n', '?')})")


def describe_export(meta: dict) -> str:
    """Plain-text lines saying what an export is and how it was edited."""
    lines = [f"export: {meta.get('format', 'hf')} ({meta.get('dtype', 'fp32')}) of "
             f"{meta.get('base_model')}" + (f", file {meta['file']}" if meta.get("file") else "")]
    if meta.get("base_source"):
        lines.append("base source: " + ", ".join(f"{k} {v}" for k, v in
                                                  meta["base_source"].items()))
    for i, d in enumerate(meta.get("orthogonalized", []), 1):
        lines.append(
            f"edit {i}: direction projected out of {len(meta.get('writers', []))} residual "
            f"writers; fitted on {_v(d.get('model'))} at layer {d.get('layer')}, position "
            f"{d.get('position')}, seed {_v(d.get('seed'))}, dataset "
            f"{_v(d.get('dataset_hash'))}, norm {d.get('norm', float('nan')):.4g}")
        scores = (d.get("meta") or {})
        if any(k in scores for k in ("bypass", "induce", "kl")):
            lines.append("  selection scores (validation): " + ", ".join(
                f"{k} {scores[k]:.4g}" for k in ("bypass", "induce", "kl") if k in scores))
    effect = meta.get("effect")
    if effect:
        lines.append(f"measured effect ({effect.get('report')}): verdict {effect.get('verdict')}")
        for arm, r in (effect.get("rates") or {}).items():
            lines.append(f"  refusal rate {arm}: {_fmt_rate(r)}")
    return "\n".join(lines)


def model_card(meta: dict, files: list[str]) -> str:
    """The export's ``README.md``: base model, what was edited, the direction's provenance and
    the measured effect (when one was recorded)."""
    base, edits = meta.get("base_model"), meta.get("orthogonalized", [])
    head = ["---", "library_name: transformers" if meta["format"] == "hf" else "library_name: gguf",
            "tags:", "- refusal-lens"] + (["- orthogonalized"] if edits else []) + ["---", ""]
    body = [f"# {meta['model']}", ""]
    if edits:
        body += [
            f"**{base}** with a residual-stream direction projected out of its weights (weight "
            "orthogonalization, Arditi et al. 2024): `W <- W - u u^T W` for every module that "
            f"writes to the residual stream ({len(meta.get('writers', []))} modules: the token "
            "embedding and each layer's attention and MLP output projections). Running it equals "
            "running the base model with the direction ablated at every layer and position. The "
            "unembedding is unchanged (tied embeddings were untied first).", ""]
        if meta.get("base_source"):
            body += ["Base model source: " + ", ".join(
                f"{k} `{v}`" for k, v in meta["base_source"].items()) + (
                ". The weights were dequantized from that GGUF to float32 before the edit."
                if "gguf" in meta["base_source"] else "."), ""]
        body += [
            "## Direction", "",
            "| edit | fitted on | layer | position | seed | dataset hash | norm | d_model |",
            "|---|---|---|---|---|---|---|---|"]
        for i, d in enumerate(edits, 1):
            body.append(f"| {i} | {_v(d.get('model'))} | {d.get('layer')} | {d.get('position')}"
                        f" | {_v(d.get('seed'))} | {_v(d.get('dataset_hash'))} | "
                        f"{d.get('norm', float('nan')):.4g} | {d.get('d_model')} |")
            scores = d.get("meta") or {}
            if any(k in scores for k in ("bypass", "induce", "kl")):
                body += ["", f"Selection scores of edit {i} on validation prompts: " + ", ".join(
                    f"{k} {scores[k]:.4g}" for k in ("bypass", "induce", "kl", "kl_random")
                    if k in scores) + "."]
        body += ["", "## Measured effect", ""]
        effect = meta.get("effect")
        if effect:
            body += [f"From `{Path(effect['report']).name}` (data: {effect.get('data')}, seeds "
                     f"{', '.join(effect.get('seeds', []))}): verdict **{effect.get('verdict')}**."
                     , "", "| arm | refusal rate [95% CI] (n) |", "|---|---|"]
            body += [f"| {arm} | {_fmt_rate(r)} |" for arm, r in effect.get("rates", {}).items()]
        else:
            body.append("No measured effect was recorded with this export (pass `--report "
                        "RUN/report.json` to `refusal-lens export`).")
    else:
        body += [f"**{base}**, exported unchanged."]
    load = (f"AutoModelForCausalLM.from_pretrained(DIR)` / `AutoTokenizer.from_pretrained(DIR)"
            if meta["format"] == "hf" else
            f"AutoModelForCausalLM.from_pretrained(DIR, gguf_file=\"{files[0]}\")`, or llama.cpp "
            f"`llama-cli -m {files[0]}")
    body += ["", "## Files", "", f"{', '.join(files)} ({meta['format']}, {meta['dtype']}). Load "
             f"with `{load}`. Written by refusal-lens; `{EXPORT_META}` records the edit."]
    return "\n".join(head + body) + "\n"


def export_model(spec: str, direction: str | os.PathLike[str], out: str | os.PathLike[str],
                 fmt: str = "hf", dtype: str = "fp32", report: str | None = None,
                 force: bool = False, placement: dict[str, Any] | None = None) -> Path:
    """Load ``spec`` (with ``placement``: ``load_model`` keyword arguments such as a device map),
    project the saved ``direction`` out of its weights and export it (the work of
    ``refusal-lens export``). Format, dtype and ``out`` are checked before the model loads."""
    from .directions import Direction
    from .model import load_model
    from .orthogonalize import orthogonalize

    _check_dtype(fmt, dtype)
    if Path(out).exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it.")
    model = load_model(spec, **(placement or {}))
    loaded = Direction.load(direction, model=model)
    effect = load_effect(report, loaded, model.name) if report else None
    if fmt == "gguf":
        check_gguf_support(model.hf_model.config, model.tokenizer, dtype)
    edited = orthogonalize(model, loaded)
    write = export_gguf if fmt == "gguf" else export_hf
    return write(edited, out, force=force, dtype=dtype, effect=effect)
