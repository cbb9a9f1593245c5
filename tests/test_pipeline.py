"""The whole pipeline end to end on the synthetic model, its CLI, and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_lens.directions import Direction, DirectionError
from refusal_lens.pipeline import FAST, FitData, run_cli, run_pipeline

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
    from refusal_lens.datasets import load_splits, norm_key
    from refusal_lens.pipeline import heldout_instructions

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
    from refusal_lens.pipeline import _why, induce_ranking

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
