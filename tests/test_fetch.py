"""Tests for refusal_lens.fetch: pinned artifacts, SHA-256 checks, archive members (no network)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from refusal_lens import fetch


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
    return buf.getvalue()


def _tar(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_verify_names_expected_actual_and_fix() -> None:
    fetch.verify(b"abc", fetch.sha256_bytes(b"abc"), "x")
    with pytest.raises(fetch.IntegrityError, match=r"SHA-256 mismatch for x: expected 0{64}, "
                                                   r"got [0-9a-f]{64}.*rerun it"):
        fetch.verify(b"abc", "0" * 64, "x", hint="rerun it")


def test_read_member_from_wheel_and_sdist() -> None:
    assert fetch.read_member(_zip("p/a.bin", b"\x00\x01"), "p-1.whl", "p/a.bin") == b"\x00\x01"
    assert fetch.read_member(_tar("p-1/a.json", b"{}"), "p-1.tar.gz", "p-1/a.json") == b"{}"
    with pytest.raises(fetch.IntegrityError, match="cannot extract p/b.bin from p-1.whl"):
        fetch.read_member(_zip("p/a.bin", b""), "p-1.whl", "p/b.bin")
    with pytest.raises(fetch.IntegrityError, match="cannot extract"):
        fetch.read_member(b"not a zip", "p-1.whl", "p/a.bin")


def test_pinned_artifact_prefers_local_copy_and_checks_pin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise fetch.DownloadError("no network in this test")

    monkeypatch.setattr(fetch, "pypi_download", offline)
    (tmp_path / "p-1.whl").write_bytes(b"wheel")
    pin = fetch.sha256_bytes(b"wheel")
    assert fetch.pinned_artifact("p", "p-1.whl", pin, local_dir=tmp_path) == b"wheel"
    with pytest.raises(fetch.IntegrityError, match="p-1.whl"):
        fetch.pinned_artifact("p", "p-1.whl", "1" * 64, local_dir=tmp_path)
    with pytest.raises(fetch.DownloadError, match="no network"):
        fetch.pinned_artifact("p", "p-2.whl", pin, local_dir=tmp_path)


def test_unreachable_index_is_a_download_error_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "PYPI_SIMPLE", "http://127.0.0.1:9/simple/{project}/")
    monkeypatch.setattr(fetch, "TIMEOUT_S", 2)
    with pytest.raises(fetch.DownloadError, match=r"127\.0\.0\.1:9/simple/p/.*do this"):
        fetch.pypi_download("p", "p-1.whl", hint="do this")
