"""Benchmarks that each run in fresh Python processes on the embedded model: cached vs first
load, peak RSS of extraction at two prompt counts, disk offload, and ``--help`` start-up.

A fresh process is what these measure (import and load costs, a peak that earlier work in the
same process would hide), so each child is a script run with ``python -c``; the parent only
parses what the child prints. Called by ``benchmarks/run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import timed  # noqa: E402


_RSS_CHILD = """
import os, resource, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import refusal_lens as rl
from refusal_lens.data_sources import load_pools


def peak_kb():
    # VmHWM belongs to this process's own address space (reset by exec); getrusage's
    # ru_maxrss survives exec and would report the parent's peak at fork time.
    try:
        with open("/proc/self/status") as fh:
            return int(next(l for l in fh if l.startswith("VmHWM:")).split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


m = rl.load_model("embedded")
base = [r["instruction"] for r in load_pools()[1]][:64]
n = int(sys.argv[1])
prompts = (base * (n // len(base) + 1))[:n]  # same length distribution for every N
before = peak_kb()
m.resid_means(prompts, batch_size=32, progress=False)
after = peak_kb()
print(before, after)
"""


def bench_memory(ns=(64, 512)) -> dict:
    """Peak RSS of a fresh process extracting means over N prompts (all layers, positions).

    Every N draws from the same 64 prompts, so only the count changes: per-batch memory
    depends on the longest prompt in a batch, not on how many batches there are.
    """
    out = {}
    for n in ns:
        res = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n)], capture_output=True,
                             text=True, check=True)
        before, after = map(int, res.stdout.split()[-2:])
        out[n] = {"peak_rss_mb_after_load": before / 1024, "peak_rss_mb": after / 1024}
    lo, hi = out[ns[0]]["peak_rss_mb"], out[ns[-1]]["peak_rss_mb"]
    return {"by_n": out, "ratio_large_to_small": hi / lo}


_OFFLOAD_CHILD = """
import json, os, sys, tempfile, time
os.environ["HF_HUB_OFFLINE"] = "1"
import refusal_lens as rl
from refusal_lens.data_sources import load_pools
from refusal_lens.generation import generate


def peak_kb(field="VmHWM:"):  # VmHWM: the high-water mark; VmRSS: resident now
    with open("/proc/self/status") as fh:
        return int(next(l for l in fh if l.startswith(field)).split()[1])


mode, n, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kw = {}
if mode == "offload":  # embedding, norm, unembedding and layers 0..14 on the CPU; 15..29 on disk
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
          "lm_head": "cpu"}
    dm.update({f"model.layers.{l}": "cpu" if l < 15 else "disk" for l in range(30)})
    kw = dict(device_map=dm, offload_folder=tempfile.mkdtemp())
t = time.perf_counter()
m = rl.load_model("embedded", **kw)
out = {"load_s": time.perf_counter() - t, "peak_rss_mb_after_load": peak_kb() / 1024,
       "rss_mb_after_load": peak_kb("VmRSS:") / 1024}
prompts = [r["instruction"] for r in load_pools()[1]][:n]
t = time.perf_counter()
m.resid_means(prompts, batch_size=32, progress=False)
out["extraction_s"], out["peak_rss_mb_extraction"] = time.perf_counter() - t, peak_kb() / 1024
t = time.perf_counter()
generate(m, prompts[:16], max_new_tokens=new_tokens, batch_size=16, progress=False)
out["generation_s"], out["peak_rss_mb_generation"] = time.perf_counter() - t, peak_kb() / 1024
print(json.dumps(out))
"""


def bench_offload(n: int = 64, new_tokens: int = 32) -> dict:
    """The organism as loaded normally vs with half its decoder layers offloaded to disk by
    accelerate (``device_map``): peak RSS of a fresh process after extracting residual means
    over ``n`` prompts (all layers), then after greedy generation of 16 prompts, and the time
    of each step. Peaks are cumulative: the generation peak includes the extraction's (and
    both include loading); ``rss_mb_after_load`` is what stays resident once loaded."""
    out = {}
    for mode in ("plain", "offload"):
        res = subprocess.run([sys.executable, "-c", _OFFLOAD_CHILD, mode, str(n), str(new_tokens)],
                             capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    p, o = out["plain"], out["offload"]
    return {
        "n_prompts": n, "new_tokens": new_tokens, "by_mode": out, "layers_on_disk": "15 of 30",
        "rss_extraction_offload_over_plain":
            o["peak_rss_mb_extraction"] / p["peak_rss_mb_extraction"],
        "rss_generation_offload_over_plain":
            o["peak_rss_mb_generation"] / p["peak_rss_mb_generation"],
        "time_extraction_offload_over_plain": o["extraction_s"] / p["extraction_s"],
        "time_generation_offload_over_plain": o["generation_s"] / p["generation_s"],
    }


_LOAD_CHILD = """
import os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
t = time.perf_counter()
import refusal_lens as rl
import refusal_lens.model  # torch and transformers (``import refusal_lens`` alone is lazy)
t1 = time.perf_counter()
rl.load_model("embedded")
print(t1 - t, time.perf_counter() - t1)
"""


def bench_load() -> dict:
    """First load (dequantize + merge into an empty cache) vs cached load, each in a fresh
    process; ``import refusal_lens`` (torch, transformers) is timed separately from
    ``load_model("embedded")``, which also pays transformers' and TransformerLens's lazy
    imports."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "REFUSAL_LENS_CACHE": tmp}
        runs = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", _LOAD_CHILD], capture_output=True,
                                 text=True, check=True, env=env)
            runs.append(tuple(map(float, res.stdout.split()[-2:])))
    (imp0, first), (imp1, cached) = runs
    return {"first_load_s": first, "cached_load_s": cached, "speedup": first / cached,
            "import_s": imp1, "cached_process_total_s": imp1 + cached,
            "first_import_s": imp0}


def bench_cli(repeat: int = 3) -> dict:
    """Wall time of ``refusal-lens [<command>] --help`` in a fresh interpreter (best of
    ``repeat``): what a user waits for help, interpreter start-up included."""
    from refusal_lens.cli import SUBCOMMANDS

    root = HERE.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    seconds = {}
    for cmd in ["", *SUBCOMMANDS]:
        argv = [sys.executable, "-m", "refusal_lens.cli", *([cmd] if cmd else []), "--help"]
        best, _ = timed(lambda: subprocess.run(argv, capture_output=True, check=True, env=env,
                                               cwd=root), repeat)
        seconds[f"refusal-lens {cmd} --help".replace("  ", " ")] = round(best, 3)
    bare, _ = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat)
    return {"help_s": seconds, "slowest_help_s": max(seconds.values()),
            "slowest": max(seconds, key=seconds.get), "python_startup_s": round(bare, 3),
            "load_avg_1min": round(os.getloadavg()[0], 2)}
