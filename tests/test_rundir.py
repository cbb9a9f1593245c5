"""Run directories: stage files round-trip exactly; manifest and configuration hash."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refusal_lens.directions import Direction
from refusal_lens.errors import ResumeError
from refusal_lens.evaluation import Arm
from refusal_lens.rundir import RunDir, check_out_dir, config_hash


def test_stages_round_trip_exactly(tmp_path):
    run = RunDir(check_out_dir(tmp_path / "run"), {"a": 1})
    value = {"arm": Arm("ablation", "harmful", ["x", "y"], ["I cannot", ""], [True, False], 0.1),
             "logits": torch.randn(2, 5, dtype=torch.float64),
             "direction": Direction(torch.randn(8), 1, -1, model="m", meta={"k": (1, 2)},
                                    tensors={"sink_basis": torch.randn(2, 8)}),
             "counts": {3: "three"}, "pair": (1, 2.5), "nan": math.nan, "third": 1 / 3}
    run.save("stage", value, 1.5)
    back = RunDir(tmp_path / "run", {"a": 1}, resume=True).load("stage")
    assert back["arm"] == value["arm"]
    assert torch.equal(back["logits"], value["logits"]) and back["logits"].dtype == torch.float64
    d = back["direction"]
    assert torch.equal(d.vector, value["direction"].vector) and d.meta == {"k": (1, 2)}
    assert torch.equal(d.tensors["sink_basis"], value["direction"].tensors["sink_basis"])
    assert back["counts"] == {3: "three"} and back["pair"] == (1, 2.5)
    assert math.isnan(back["nan"]) and back["third"] == 1 / 3
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config_hash"] == config_hash({"a": 1})
    assert manifest["stages"]["stage"]["seconds"] == 1.5


def test_resume_needs_the_same_configuration(tmp_path):
    RunDir(check_out_dir(tmp_path / "run"), {"a": 1, "b": [1, 2]})
    RunDir(tmp_path / "run", {"a": 1, "b": (1, 2)}, resume=True)  # tuples read back as lists
    with pytest.raises(ResumeError, match=r"differs in \['b'\]"):
        RunDir(tmp_path / "run", {"a": 1, "b": [2]}, resume=True)


def test_resume_needs_the_same_weights_prompts_and_versions(tmp_path):
    run = RunDir(check_out_dir(tmp_path / "run"), {"a": 1})
    run.check_inputs({"weights_sha256": "abc", "environment": {"torch": "2.13.0"}})
    again = RunDir(tmp_path / "run", {"a": 1}, resume=True)
    again.check_inputs({"weights_sha256": "abc", "environment": {"torch": "2.13.0"}})
    with pytest.raises(ResumeError, match=r"other \['weights_sha256'\].*--force"):
        again.check_inputs({"weights_sha256": "def", "environment": {"torch": "2.13.0"}})
