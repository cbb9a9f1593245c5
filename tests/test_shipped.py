"""Shipped directions: written from a finished run, loaded by spec."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_lens.directions import Direction
from refusal_lens.errors import InputError
from refusal_lens.shipped import ship_direction, shipped_direction, shipped_specs


def _finished_run(tmp_path, spec="synthetic"):
    run = tmp_path / "run"
    run.mkdir()
    d = Direction(torch.randn(16, dtype=torch.float64), 2, -1, model="Synthetic", seed=0,
                  dataset_hash="abc", meta={"selection_rule": "joint"})
    d.save(run / "direction")
    report = {"config": {"run": {"model": spec}, "seeds": [0, 1]}, "verdict": "SUPPORTED",
              "created": "2026-01-01T00:00:00", "selection": {"0": {"rule": "strict: ..."}},
              "environment": {"torch": "x"}}
    (run / "report.json").write_text(json.dumps(report))
    return run, d


def test_ship_and_load_round_trip(tmp_path):
    run, d = _finished_run(tmp_path)
    folder = tmp_path / "directions"
    st = ship_direction(run, "synthetic", "refusal-lens run --model synthetic", folder)
    assert st == folder / "synthetic.safetensors" and (folder / "synthetic.json").is_file()
    back = Direction.load(st)
    assert torch.equal(back.vector, d.vector.float().double())  # saved in float32
    assert (back.layer, back.position) == (2, -1)
    shipped = back.meta["shipped"]
    assert shipped["command"] == "refusal-lens run --model synthetic"
    assert shipped["selection_rule"] == "joint" and shipped["dataset_hash"] == "abc"
    assert shipped["verdict"] == "SUPPORTED" and shipped["seeds_in_run"] == [0, 1]


def test_ship_refuses_unfinished_runs_and_other_models(tmp_path):
    run, _ = _finished_run(tmp_path)
    with pytest.raises(InputError, match="not 'embedded'"):
        ship_direction(run, "embedded", "cmd", tmp_path / "out")
    (run / "report.json").unlink()
    with pytest.raises(InputError, match="finished"):
        ship_direction(run, "synthetic", "cmd", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="shipped"):
        shipped_direction("no-such-model")


@pytest.mark.parametrize("spec, d_model, n_layers", [("embedded", 576, 30),
                                                     ("qwen2.5-coder-0.5b-instruct", 896, 24)])
def test_each_shipped_model_has_its_direction(spec, d_model, n_layers):
    assert spec in shipped_specs()
    d = shipped_direction(spec)
    assert d.d_model == d_model and 0 <= d.layer < n_layers and d.position < 0
    shipped = d.meta["shipped"]
    assert shipped["spec"] == spec and f"--model {spec}" in shipped["command"] \
        or (spec == "embedded" and shipped["command"].startswith("refusal-lens run"))
    assert shipped["selection_rule"] in ("joint", "paper") and d.seed == 0
    assert d.dataset_hash and torch.isfinite(d.vector).all()
