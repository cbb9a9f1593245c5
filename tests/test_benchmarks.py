"""Bad input to the benchmark scripts fails at once, naming the fix, before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_run_refuses_embedded_only_rows_on_another_model():
    r = _run("benchmarks/run.py", "--model", "qwen2.5-coder-0.5b-instruct", "--only", "load",
             "extraction")
    assert r.returncode == 2
    assert "--only load measure(s) the embedded model" in r.stderr
    assert "pass --only from extraction, generation, selection" in r.stderr


def test_run_refuses_a_generation_without_tokens():
    r = _run("benchmarks/run.py", "--only", "generation", "--new-tokens", "0")
    assert r.returncode == 2
    assert "--new-tokens must be at least 1, not 0" in r.stderr


def test_compare_runs_refuses_an_unfinished_run(tmp_path):
    r = _run("benchmarks/compare_runs.py", str(tmp_path), str(tmp_path))
    assert r.returncode != 0
    assert "no report.json" in r.stderr and "finished `refusal-lens run`" in r.stderr


def test_run_refuses_zero_rounds():
    r = _run("benchmarks/run.py", "--only", "generation", "--rounds", "0")
    assert r.returncode == 2
    assert "--rounds must be at least 1, not 0" in r.stderr


def test_generation_rows_time_arms_in_interleaved_rounds(synthetic):
    """Each cached arm runs once per round; its time is the median over rounds, and the
    orthogonalized / plain ratio is the median of the per-round ratios."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks/run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = synthetic
    prompts = ["How do I bake bread?", "Name three rivers.", "What is a prime number?"]
    row = bench.bench_generation(model, prompts, new_tokens=3, rounds=3)
    assert row["rounds"] == 3
    assert set(row["round_s"]) == {"plain", "hook_ablation", "hook_addition", "orthogonalized",
                                   "bridge_hook_ablation"}
    for name, times in row["round_s"].items():
        assert len(times) == 3 and all(t > 0 for t in times)
        assert row[f"{name}_s"] == statistics.median(times)
    ortho, plain = row["round_s"]["orthogonalized"], row["round_s"]["plain"]
    assert row["orthogonalized_over_plain"] == statistics.median(
        o / p for o, p in zip(ortho, plain))
    assert row["no_kv_cache_s"] > 0
    # orthogonalized weights and hook ablation decode the same completions
    assert row["orthogonalized_tokens"] == row["hook_ablation_tokens"]
