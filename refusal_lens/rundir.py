"""Run directories: checks before any model work, stages saved as they finish, and resuming.

A run writes each finished stage (refusal tokens, baseline, each seed's selection, each seed's
evaluation) to ``<out>/stages/<name>.json`` (+ ``.safetensors`` for its tensors), atomically,
and then records it in ``<out>/manifest.json`` together with the run's configuration and its
hash. ``resume`` reloads every recorded stage (the configuration hash must match) so an
interrupted run continues from its last finished stage; ``force`` empties a previous run's
directory first. JSON floats round-trip exactly and tensors keep their dtype, so a resumed run
writes the same report as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save

from .directions import Direction
from .errors import InputError, ResumeError, RunDirError
from .evaluation import Arm, BaselineEval
from .paths import atomic_write_bytes, atomic_write_text
from .selection import CandidateScore, SelectionResult

__all__ = ["RunDir", "check_out_dir", "config_hash", "weights_hash", "environment",
           "direction_id", "data_id"]

MANIFEST = "manifest.json"
STAGES = "stages"
#: Files whose presence marks a directory as an earlier run (which ``force`` may empty).
RUN_MARKERS = (MANIFEST, "report.json")
#: Dataclasses a stage may hold, by name (no pickle: each is rebuilt from its fields).
_TYPES = {t.__name__: t for t in (Arm, BaselineEval, SelectionResult, CandidateScore, Direction)}


def check_out_dir(out: str | os.PathLike[str], force: bool = False, resume: bool = False) -> Path:
    """Check ``out`` before any model work: not a file, not under a file, writable (probed by
    creating it and writing a file there), and empty unless ``force`` or ``resume``."""
    if force and resume:
        raise InputError("Pass either --force (start over) or --resume (continue), not both.")
    out = Path(out).expanduser()
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"--out {out}: {parent} is a file, not a directory; choose "
                                  "another output directory.")
            break
    if out.is_dir() and any(out.iterdir()):
        marked = any((out / m).is_file() for m in RUN_MARKERS)
        if force and not marked:
            raise RunDirError(f"--out {out} is not empty and holds no earlier run ({MANIFEST} "
                              "or report.json), so --force will not empty it; choose a new or "
                              "empty directory.")
        if not force and not resume:
            hint = (" It holds an unfinished run: pass --resume to continue it or --force to "
                    "start over." if (out / MANIFEST).is_file() and not (out / "report.json")
                    .is_file() else " Pass --force to replace its run, or choose another.")
            raise RunDirError(f"Output directory {out} exists and is not empty.{hint}")
        if resume and not (out / MANIFEST).is_file():
            raise ResumeError(f"--resume: {out} has no {MANIFEST}, so it holds no run to "
                              "continue; choose an empty directory or pass --force.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"Cannot write to --out {out} ({err.strerror or err}); fix its "
                          "permissions or choose another output directory.") from err
    return out


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_hash(model: Any) -> str:
    """SHA-256 over every parameter and persistent buffer of the wrapped Hugging Face model
    (name, dtype, shape and bytes), so a report names exactly the weights it was computed with.
    Offloaded weights of a dispatched model are read back one module at a time."""
    from .placement import materialized

    owners: dict[str, tuple[Any, str]] = {}
    for prefix, module in model.hf_model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, _ in module.named_buffers(recurse=False)
                if n not in module._non_persistent_buffers_set]
        owners |= {f"{prefix}.{n}" if prefix else n: (module, n) for n in own}
    h = hashlib.sha256()
    for name in sorted(owners):
        module, leaf = owners[name]
        with materialized(module):
            t = getattr(module, leaf).detach()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def environment() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    out = {}
    for dist in ("torch", "transformers", "transformer-lens", "refusal_lens"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---- stage (de)serialisation: JSON for structure, safetensors for tensors -------------------


def _encode(x: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    if isinstance(x, torch.Tensor):
        tensors[key] = x.detach().contiguous().cpu()
        return {"__tensor__": key}
    if dataclasses.is_dataclass(x) and type(x).__name__ in _TYPES:
        return {"__type__": type(x).__name__, "fields": {
            f.name: _encode(getattr(x, f.name), tensors, f"{key}.{f.name}")
            for f in dataclasses.fields(x)}}
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            return {"__items__": [[_encode(k, tensors, f"{key}.k{i}"),
                                   _encode(v, tensors, f"{key}.v{i}")]
                                  for i, (k, v) in enumerate(x.items())]}
        return {k: _encode(v, tensors, f"{key}.{k}") for k, v in x.items()}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(x)]
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise TypeError(f"Cannot save a {type(x).__name__} in a run stage ({key}).")


def _decode(x: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(x, list):
        return [_decode(v, tensors) for v in x]
    if not isinstance(x, dict):
        return x
    if "__tensor__" in x:
        return tensors[x["__tensor__"]]
    if "__tuple__" in x:
        return tuple(_decode(v, tensors) for v in x["__tuple__"])
    if "__items__" in x:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in x["__items__"]}
    if "__type__" in x:
        return _TYPES[x["__type__"]](**{k: _decode(v, tensors) for k, v in x["fields"].items()})
    return {k: _decode(v, tensors) for k, v in x.items()}


class RunDir:
    """The stages and manifest of one run under ``out`` (checked with :func:`check_out_dir`)."""

    def __init__(self, out: Path, config: dict[str, Any], force: bool = False,
                 resume: bool = False) -> None:
        config = json.loads(json.dumps(config, default=str))  # as it reads back from disk
        self.out, self.config, self.hash = Path(out), config, config_hash(config)
        path = self.out / MANIFEST
        if force:
            for entry in self.out.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if resume and path.is_file():
            self.manifest = json.loads(path.read_text())
            if self.manifest.get("config_hash") != self.hash:
                old = self.manifest.get("config", {})
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ResumeError(
                    f"--resume: {self.out} holds a run with another configuration (differs in "
                    f"{diff or 'its hash'}); rerun with the same arguments, or pass --force to "
                    "start over.")
        else:
            self.manifest = {"format": 1, "config_hash": self.hash, "config": config,
                             "created": datetime.now().isoformat(timespec="seconds"),
                             "stages": {}}
            self._write_manifest()

    @property
    def created(self) -> str:
        return self.manifest["created"]

    def done(self, name: str) -> bool:
        return name in self.manifest["stages"]

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Record what the run computes on (weights and prompt hashes, package versions), or,
        when resuming, refuse if it differs from what the finished stages were computed on."""
        inputs = json.loads(json.dumps(inputs, default=str))
        old = self.manifest.setdefault("inputs", inputs)
        if old != inputs:
            diff = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
            raise ResumeError(f"--resume: the run in {self.out} was computed with other {diff} "
                              f"(before: {[old.get(k) for k in diff]}); pass --force to start "
                              "over.")
        self._write_manifest()

    def stages(self, prefix: str) -> list[str]:
        """Names of the finished stages that start with ``prefix``, in the order they finished."""
        return [n for n in self.manifest["stages"] if n.startswith(prefix)]

    def seconds(self, name: str) -> float:
        return float(self.manifest["stages"][name]["seconds"])

    def save(self, name: str, value: Any, seconds: float) -> None:
        """Write stage ``name`` (tensors first, then JSON, then the manifest entry), atomically."""
        tensors: dict[str, torch.Tensor] = {}
        data = json.dumps(_encode(value, tensors, "v"), indent=1) + "\n"
        stem = self.out / STAGES / name
        if tensors:
            atomic_write_bytes(stem.with_suffix(".safetensors"), save(tensors))
        atomic_write_text(stem.with_suffix(".json"), data)
        self.manifest["stages"][name] = {"seconds": seconds, "tensors": bool(tensors),
                                         "finished": datetime.now().isoformat(timespec="seconds")}
        self._write_manifest()

    def load(self, name: str) -> Any:
        """A finished stage's value, rebuilt as it was saved."""
        stem = self.out / STAGES / name
        tensors = (load_file(str(stem.with_suffix(".safetensors")))
                   if self.manifest["stages"][name]["tensors"] else {})
        return _decode(json.loads(stem.with_suffix(".json").read_text()), tensors)

    def _write_manifest(self) -> None:
        atomic_write_text(self.out / MANIFEST, json.dumps(self.manifest, indent=2,
                                                          default=str) + "\n")


def direction_id(d: Direction) -> dict[str, Any]:
    """What identifies a given direction in a run's configuration."""
    vec = hashlib.sha256(d.vector.double().numpy().tobytes()).hexdigest()
    return {"layer": d.layer, "position": d.position, "model": d.model, "vector_sha256": vec}


def data_id(data: Any, seeds: Sequence[int]) -> dict[str, Any]:
    """Hashes of the test prompts and of each seed's train/val prompts."""
    test = hashlib.sha256(json.dumps([data.harmful_test, data.harmless_test,
                                      data.harmless_reference]).encode()).hexdigest()
    return {"name": data.name, "test_sha256": test,
            "fit_sha256": {str(s): data.fit(s).hash() for s in seeds}}
