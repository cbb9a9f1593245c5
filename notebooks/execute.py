"""Execute the notebooks in place, so that they are committed with their outputs.

    python notebooks/execute.py [NOTEBOOK ...] [--full]

Runs each notebook top to bottom on this interpreter's kernel (fast mode unless ``--full``),
offline, and saves it with its outputs: each figure as interactive plotly data plus a PNG image
(see the first code cell), and each cell's text streams merged with progress-bar redraws
resolved, as Jupyter shows them. Prints, and stores in the notebook's metadata, the wall time,
the kernel's CPU time (user + system; on an idle machine the wall time is about this divided by
the cores the kernel keeps busy) and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the kernel)."""
    t = os.times()
    return t.children_user + t.children_system


def execute(path: Path, fast: bool = True, timeout: int = 1800, threads: int | None = None) -> dict:
    """Execute ``path`` in place; returns the run's record (also stored in its metadata).
    ``threads`` sets the kernel's torch/OpenMP threads (default: torch's own choice)."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({  # this interpreter, whatever is installed
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "refusal-lens", "language": "python"}))
        env = {"JUPYTER_PATH": tmp, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "REFUSAL_LENS_FAST": "1" if fast else "0"}
        if threads:
            env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        load_before = os.getloadavg()
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        try:
            NotebookClient(nb, kernel_name="python3", timeout=timeout, coalesce_streams=True,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    seconds = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # the kernel, once it has exited
    for cell in nb.cells:  # bars that cleared themselves leave blank stream text behind
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if o.output_type != "stream" or o.text.strip()]
    record = {"fast": fast, "seconds": round(seconds, 1), "kernel_cpu_seconds": round(cpu, 1),
              "threads": threads, "cpu_count": os.cpu_count(), "slowest_cells": _slowest(nb),
              "load_avg_1min_before": round(load_before[0], 2),
              "load_avg_1min_after": round(os.getloadavg()[0], 2),
              "executed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    nb.metadata["refusal_lens"] = record
    tmp_path = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp_path)
    os.replace(tmp_path, path)
    return record


def _slowest(nb, n: int = 3) -> list[list]:
    """The ``n`` slowest code cells: [index, wall seconds], from nbclient's timing metadata."""
    from datetime import datetime

    times = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            a, b = (datetime.fromisoformat(ex[k].replace("Z", "+00:00"))
                    for k in ("iopub.execute_input", "shell.execute_reply"))
            times.append([i, round((b - a).total_seconds(), 1)])
    return sorted(times, key=lambda t: -t[1])[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook here")
    parser.add_argument("--full", action="store_true", help="full sizes instead of fast mode")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenMP threads of the kernel (default: torch's own choice)")
    args = parser.parse_args()
    for path in args.notebooks or sorted(HERE.glob("*.ipynb")):
        rec = execute(path.resolve(), fast=not args.full, threads=args.threads)
        print(f"{path.name}: {rec['seconds']:.1f} s, kernel CPU {rec['kernel_cpu_seconds']:.1f} s "
              f"({'fast' if rec['fast'] else 'full'} mode; "
              f"load average {rec['load_avg_1min_before']} -> {rec['load_avg_1min_after']} on "
              f"{rec['cpu_count']} CPUs; slowest cells {rec['slowest_cells']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
