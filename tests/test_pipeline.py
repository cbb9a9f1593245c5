"""The whole pipeline end to end on the synthetic model, its CLI, and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_lens.directions import Direction, DirectionError
from refusal_lens.datasets import FitData
from refusal_lens.pipeline import FAST, run_cli, run_pipeline

FILES = ["report.json", "report.md", "direction.safetensors", "direction.json", "scores.json",
         "scores.csv", "completions.jsonl", "candidate_scores.html", "refusal_rates.html"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "synthetic"
    assert run_cli(["--model", "synthetic", "--out", str(out), "--fast", "--seeds", "0", "1",
                    "--max-new-tokens", "6"]) == 0
    return out


def test_writes_every_file(run_dir):
    for name in FILES:
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == "SUPPORTED"
    assert report["config"]["seeds"] == [0, 1]
    assert set(report["directions"]) == {"0", "1"}
    r = report["rates"]
    assert r["baseline_harmful"]["rate"] >= 0.9 and r["ablation"]["rate"] <= 0.1
    assert r["random_ablation"]["rate"] >= 0.9 and r["addition"]["rate"] >= 0.9
    for v in r.values():
        assert v["ci_low"] <= v["rate"] <= v["ci_high"]
    assert "SUPPORTED" in (run_dir / "report.md").read_text()
    d = Direction.load(run_dir / "direction")
    meta = json.loads((run_dir / "direction.json").read_text())
    assert d.layer == meta["layer"] and meta["dataset_hash"] and "selection" in meta["meta"]
    lines = (run_dir / "completions.jsonl").read_text().splitlines()
    arms = {json.loads(x)["arm"] for x in lines}
    assert {"baseline", "ablation", "random_ablation", "addition", "random_addition",
            "orthogonalized", "random_orthogonalized"} <= arms
    scores = json.loads((run_dir / "scores.json").read_text())
    assert set(scores["seeds"]) == {"0", "1"}
    secs = report["seeds"][0]["seconds"]
    assert {"generate_ablation", "ce_orthogonalized", "ce_random_ablation",
            "orthogonalize_orthogonalized"} <= set(secs)
    assert set(report["capability"]) == {"baseline", "random_ablation", "orthogonalized"}
    assert all(v >= 0 for v in secs.values())
    assert "reference" not in report["ce_text"]  # synthetic prompts have no reference answers


def test_refuses_existing_directory(run_dir, synthetic):
    with pytest.raises(FileExistsError, match="not empty"):
        run_pipeline(synthetic, run_dir)
    with pytest.raises(FileExistsError):
        run_cli(["--model", "synthetic", "--out", str(run_dir)])


def test_wrong_width_direction_errors(synthetic, tmp_path):
    bad = Direction(torch.ones(synthetic.d_model + 3), layer=1, position=-1, model="other")
    with pytest.raises(DirectionError, match="width"):
        run_pipeline(synthetic, tmp_path / "out", direction=bad)


def test_given_direction_skips_selection(synthetic, tmp_path):
    syn = synthetic.info["synthetic"]
    d = Direction(syn.direction.double() * 6, layer=2, position=-1, model="synthetic")
    report = run_pipeline(synthetic, tmp_path / "given", direction=d, seeds=(0,), n_train=8,
                          n_val=4, n_test=8, max_new_tokens=6, orthogonalized=False,
                          progress=False)
    assert report["verdict"] == "SUPPORTED" and report["selection"] == {}
    assert not (tmp_path / "given" / "scores.json").exists()


@pytest.mark.embedded
def test_embedded_fast(tmp_path):
    report = run_pipeline("embedded", tmp_path / "embedded", **FAST, progress=False)
    assert report["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "NO-BASELINE-REFUSAL")
    assert (tmp_path / "embedded" / "report.md").is_file()
    d = report["directions"]["0"]
    assert 0 <= d["layer"] < 24


def test_heldout_instructions_avoid_test_organism_and_fit_prompts():
    from refusal_lens.data_sources import norm_key
    from refusal_lens.datasets import heldout_instructions, load_splits

    ref = load_splits(seed=0)
    fits = [FitData(ref.harmful_train, ref.harmful_val, ref.harmless_train, ref.harmless_val)]
    for side in ("harmless", "harmful"):
        dev = heldout_instructions(fits, 50, side)
        assert len(dev) == 50 and dev == heldout_instructions(fits, 50, side)
        banned = {norm_key(x) for x in (ref.harmful_test + ref.harmless_test
                                        + ref.harmful_organism + ref.harmless_organism
                                        + ref.harmful_train + ref.harmful_val
                                        + ref.harmless_train + ref.harmless_val)}
        assert not banned & {norm_key(x) for x in dev}
    with pytest.raises(ValueError, match="side"):
        heldout_instructions(fits, 5, "neutral")
    with pytest.raises(ValueError, match="remain"):
        heldout_instructions(fits, 10**6)


def test_induce_ranking_and_the_addition_reason(run_dir):
    from refusal_lens.report_md import _why, induce_ranking

    table = [{"layer": 3, "position": -1, "scored": True, "induce": 0.5, "bypass": -4.0},
             {"layer": 2, "position": -1, "scored": True, "induce": 1.5, "bypass": -3.0},
             {"layer": 1, "position": -2, "scored": True, "induce": float("nan"), "bypass": 1.0},
             {"layer": 0, "position": -1, "scored": False, "induce": float("nan")}]
    rank = induce_ranking(table, 3, -1)
    assert rank == {"rank": 2, "of": 2, "best": {"layer": 2, "position": -1, "induce": 1.5,
                                                  "bypass": -3.0}}
    assert induce_ranking(table, 0, -1) == {}
    report = json.loads((run_dir / "report.json").read_text())
    assert all("induce_among_scored" in v for v in report["selection"].values())
    report["selection"]["0"] |= {"induce": 0.5, "induce_among_scored": rank}
    assert "rank 2 of 2 scored (best: layer 2" in _why("addition", report)


# ---- runs write as they go, resume, and check everything before any model work ------------

SMALL = dict(seeds=(0, 1), n_train=16, n_val=4, n_test=8, max_new_tokens=6, n_screen=3, top_k=2,
             progress=False)
SAME_FILES = ["report.json", "report.md", "completions.jsonl", "scores.json", "scores.csv",
              "direction.safetensors", "direction.json", "direction-seed1.safetensors"]


@pytest.fixture
def frozen_clock(monkeypatch):
    """Wall-clock fields (timings, dates) fixed, so two runs' reports can be compared whole."""
    import datetime as dt
    import time

    from refusal_lens import rundir

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(time, "perf_counter", lambda: 0.0)
    monkeypatch.setattr(rundir, "datetime", Frozen)


def test_interrupted_run_resumes_to_a_bit_identical_report(synthetic, tmp_path, frozen_clock,
                                                           monkeypatch):
    from refusal_lens import evaluation, selection

    whole = tmp_path / "whole"
    run_pipeline(synthetic, whole, **SMALL)
    real, calls = evaluation._arm, []

    def arm_until_stopped(model, name, *args, **kw):
        calls.append(name)
        if calls.count("random_addition") == 2:
            raise KeyboardInterrupt  # the user stops the run during seed 1's fourth arm
        return real(model, name, *args, **kw)

    cut = tmp_path / "cut"
    monkeypatch.setattr(evaluation, "_arm", arm_until_stopped)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(synthetic, cut, **SMALL)
    manifest = json.loads((cut / "manifest.json").read_text())
    arms = ["ablation", "random_ablation", "addition", "random_addition", "orthogonalized",
            "random_orthogonalized"]
    assert list(manifest["stages"]) == (
        ["refusal_tokens", "baseline", "selection-seed0"]
        + [f"evaluation-seed0-{a}" for a in arms] + ["evaluation-seed0", "selection-seed1"]
        + [f"evaluation-seed1-{a}" for a in arms[:3]])
    assert not (cut / "report.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):  # a plain rerun is told what to do
        run_pipeline(synthetic, cut, **SMALL)

    def no_rerun(*args, **kw):
        raise AssertionError("a finished stage was recomputed")

    calls.clear()
    monkeypatch.setattr(evaluation, "_arm", lambda m, name, *a, **k: calls.append(name) or real(
        m, name, *a, **k))
    monkeypatch.setattr(evaluation, "evaluate_baseline", no_rerun)  # run_pipeline imports them
    monkeypatch.setattr(selection, "select_direction", no_rerun)  # when it runs
    run_pipeline(synthetic, cut, resume=True, **SMALL)
    assert calls == arms[3:]  # only the arms that had not finished
    for name in SAME_FILES:
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name


def test_resume_with_other_arguments_is_refused(synthetic, tmp_path):
    from refusal_lens.errors import ResumeError

    out = tmp_path / "run"
    run_pipeline(synthetic, out, **(SMALL | {"seeds": (0,)}))
    with pytest.raises(ResumeError, match=r"another configuration.*max_new_tokens"):
        run_pipeline(synthetic, out, resume=True, **(SMALL | {"seeds": (0,), "max_new_tokens": 5}))


def test_force_empties_an_earlier_run(synthetic, tmp_path):
    out = tmp_path / "run"
    run_pipeline(synthetic, out, **SMALL)
    assert (out / "direction-seed1.safetensors").is_file()
    report = run_pipeline(synthetic, out, force=True, **(SMALL | {"seeds": (0,)}))
    assert report["config"]["seeds"] == [0]
    assert not (out / "direction-seed1.safetensors").exists()
    assert not (out / "stages" / "selection-seed1.json").exists()


def test_report_records_versions_weights_hash_and_interval_method(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["environment"]) == {"torch", "transformers", "transformer-lens",
                                          "refusal_lens"}
    assert report["environment"]["torch"] == torch.__version__.split("+")[0] or \
        report["environment"]["torch"].startswith(torch.__version__.split("+")[0])
    assert len(report["model_weights_sha256"]) == 64
    assert report["config"]["hash"] and report["config"]["run"]["max_new_tokens"] == 6
    assert "cluster bootstrap" in report["ci_method"]
    md = (run_dir / "report.md").read_text()
    assert "cluster-bootstrap CI over prompts" in md and "each resample draws prompts" in md
    assert report["rates"]["ablation"]["n_seeds"] == 2


def test_cross_model_direction_is_recorded_in_the_report(synthetic, tmp_path):
    from refusal_lens.errors import DirectionTransferWarning

    syn = synthetic.info["synthetic"]
    d = Direction(syn.direction.double() * 6, layer=2, position=-1, model="Qwen-1_8B-chat")
    with pytest.warns(DirectionTransferWarning):
        report = run_pipeline(synthetic, tmp_path / "given", direction=d, seeds=(0,), n_train=8,
                              n_val=4, n_test=8, max_new_tokens=6, orthogonalized=False,
                              progress=False)
    assert any("fitted on 'Qwen-1_8B-chat'" in n for n in report["notes"])
    assert "Qwen-1_8B-chat" in (tmp_path / "given" / "report.md").read_text()


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if the pipeline loads a model or starts the baseline."""
    from refusal_lens import evaluation, model

    def boom(*args, **kw):
        raise AssertionError("model work started before the arguments were checked")

    monkeypatch.setattr(model, "load_model", boom)  # run_pipeline imports both when it runs
    monkeypatch.setattr(evaluation, "evaluate_baseline", boom)


@pytest.mark.parametrize("args, message", [
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1, got 0"),
    (["--n-val", "0"], r"n_val must be an integer >= 1, got 0 \(--n-val\)"),
    (["--n-train", "-3"], "n_train must be"),
    (["--n-test", "0"], "n_test must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--gen-batch-size", "0"], "gen_batch_size must be"),
    (["--seeds", "1", "1"], "repeats"),
    (["--sink-energy", "1.5"], r"sink_energy \(--sink-energy\) must be in \[0, 1\), got 1.5"),
    (["--sink-energy", "-0.1"], "sink_energy"),
])
def test_bad_arguments_are_refused_before_model_work(args, message, tmp_path, no_model_work):
    from refusal_lens.errors import InputError

    with pytest.raises(InputError, match=message):
        run_cli(["--model", "synthetic", "--out", str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()


def test_bad_out_directories_are_refused_before_model_work(tmp_path, no_model_work):
    import os

    from refusal_lens.errors import RunDirError

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        run_cli(["--model", "synthetic", "--out", str(a_file)])
    with pytest.raises(RunDirError, match=r"file.txt is a file"):
        run_cli(["--model", "synthetic", "--out", str(a_file / "sub" / "out")])
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only filesystem
        unwritable = "/sys/refusal-lens-test/out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = str(locked / "out")
    with pytest.raises(RunDirError, match="Cannot write to --out"):
        run_cli(["--model", "synthetic", "--out", unwritable])
    full = tmp_path / "full"
    (full / "notes").mkdir(parents=True)
    with pytest.raises(RunDirError, match="not empty"):
        run_cli(["--model", "synthetic", "--out", str(full)])
    with pytest.raises(RunDirError, match="holds no earlier run"):
        run_cli(["--model", "synthetic", "--out", str(full), "--force"])
    with pytest.raises(RunDirError, match="no manifest.json"):
        run_cli(["--model", "synthetic", "--out", str(full), "--resume"])
    assert (full / "notes").is_dir()  # nothing of the user's was removed
    with pytest.raises(SystemExit):
        run_cli(["--out", str(tmp_path / "x"), "--force", "--resume"])


def test_bad_direction_files_are_refused_before_model_work(tmp_path, no_model_work):
    with pytest.raises(FileNotFoundError, match="No direction file"):
        run_cli(["--model", "synthetic", "--out", str(tmp_path / "o"), "--direction",
                 str(tmp_path / "missing.safetensors")])
    st, _ = Direction(torch.ones(64), layer=1, position=-1).save(tmp_path / "d")
    st.write_bytes(st.read_bytes()[:50])
    with pytest.raises(DirectionError, match="truncated"):
        run_cli(["--model", "synthetic", "--out", str(tmp_path / "o"), "--direction", str(st)])


def test_direction_layer_out_of_range_is_refused_before_the_baseline(synthetic, tmp_path,
                                                                     monkeypatch):
    from refusal_lens import evaluation

    def boom(*args, **kw):
        raise AssertionError("the baseline ran")

    monkeypatch.setattr(evaluation, "evaluate_baseline", boom)
    bad = Direction(torch.ones(synthetic.d_model), layer=99, position=-1, model="synthetic")
    with pytest.raises(DirectionError, match="layer 99 is outside"):
        run_pipeline(synthetic, tmp_path / "out", direction=bad, **SMALL)


def test_evenly_spaced_test_sets_keep_references_and_categories_aligned():
    from refusal_lens.datasets import ExperimentData

    data = ExperimentData("d", [f"h{i}" for i in range(10)], [f"s{i}" for i in range(10)],
                          lambda seed: None, [f"r{i}" for i in range(10)],
                          [f"c{i}" for i in range(10)])
    cut = data.evenly_spaced(5)
    assert cut.harmful_test == ["h0", "h2", "h4", "h6", "h8"]
    assert cut.harmful_categories == ["c0", "c2", "c4", "c6", "c8"]
    assert cut.harmless_test == ["s0", "s2", "s4", "s6", "s8"]
    assert cut.harmless_reference == ["r0", "r2", "r4", "r6", "r8"]
    assert data.harmful_test[1] == "h1"  # the original is unchanged


def _compare_runs_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_runs_same_and_different(run_dir, tmp_path):
    """benchmarks/compare_runs.py: a run equals itself; a changed rate, a changed completion or a
    turned direction is reported and exits 1."""
    import shutil
    cr = _compare_runs_module()
    out = tmp_path / "same.json"
    assert cr.main([str(run_dir), str(run_dir), "--out", str(out)]) == 0
    same = json.loads(out.read_text())
    assert same["same"] and same["completions"] > 0
    assert all(c > 0.999999 for c in same["direction_cosines"].values())
    assert same["seconds"]["timing.total_s"]["ratio_b_over_a"] == pytest.approx(1.0)

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    report = json.loads((other / "report.json").read_text())
    report["rates"]["ablation"]["rate"] += 0.01
    report["capability"]["baseline"]["ce"] *= 1 + 1e-4
    (other / "report.json").write_text(json.dumps(report))
    lines = (other / "completions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["completion"] += " changed"
    (other / "completions.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    d = Direction.load(other / "direction")
    import dataclasses
    dataclasses.replace(d, vector=d.vector + 0.1 * torch.roll(d.vector, 1)).save(other / "direction")
    result = cr.compare_runs(run_dir, other)
    text = "\n".join(result["differences"])
    assert not result["same"]
    assert "rates.ablation.rate" in text and "baseline.ce" in text
    assert "completions differ" in text and "direction.safetensors: cosine" in text
    assert cr.main([str(run_dir), str(other)]) == 1
