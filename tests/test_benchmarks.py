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
