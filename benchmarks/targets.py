"""The benchmark targets and their Markdown table, from ``benchmarks/results.json``'s layout:
each target that was measured, its value, its bar and whether it is met (another model's rows,
under ``models``, against the same bars)."""

from __future__ import annotations


def targets(r: dict) -> dict:
    """Each target that was measured: value, bar, met?"""
    checks = [
        ("extraction", "speedup_vs_naive", "extraction speedup vs naive (>= 3x)", lambda v: v >= 3),
        ("extraction", "roofline_fraction", "extraction roofline fraction (>= 0.30)",
         lambda v: v >= 0.30),
        ("memory", "ratio_large_to_small", "peak RSS N=512 / N=64 (<= 1.10)", lambda v: v <= 1.10),
        ("generation", "orthogonalized_over_plain",
         "orthogonalized / plain generation time (<= 1.05)", lambda v: v <= 1.05),
        ("generation", "kv_cache_speedup", "KV-cache generation speedup (>= 3x)", lambda v: v >= 3),
        ("load", "cached_load_s", "cached model load seconds (<= 5)", lambda v: v <= 5),
        ("cli", "slowest_help_s", "slowest `refusal-lens [<command>] --help` seconds (<= 1)",
         lambda v: v <= 1),
        ("offload", "rss_extraction_offload_over_plain",
         "peak RSS extraction, half the layers on disk / none (< 1)", lambda v: v < 1),
        ("offload", "rss_generation_offload_over_plain",
         "peak RSS generation, half the layers on disk / none (< 1)", lambda v: v < 1),
        ("offload", "time_extraction_offload_over_plain",
         "extraction time, half the layers on disk / none (cost, no bar)", None),
        ("offload", "time_generation_offload_over_plain",
         "generation time, half the layers on disk / none (cost, no bar)", None),
    ]
    out = {label: {"value": round(r[sec][key], 3),
                   "met": None if ok is None else bool(ok(r[sec][key]))}
           for sec, key, label, ok in checks if key in r.get(sec, {})}
    for spec, rows in r.get("models", {}).items():  # the same targets on other models
        out |= {f"{label} [{spec}]": {"value": round(rows[sec][key], 3),
                                      "met": None if ok is None else bool(ok(rows[sec][key]))}
                for sec, key, label, ok in checks if key in rows.get(sec, {})}
    return out


def markdown(r: dict) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | "
              f"{'-' if v['met'] is None else 'yes' if v['met'] else 'NO'} |"
              for k, v in r["targets"].items()]
    if "cli" in r:
        lines.append(f"\nSlowest help: `{r['cli']['slowest']}`; each command's seconds are in "
                     "results.json (`cli.help_s`).")
    for spec, m in [("", r["machine"])] + [(f" [{k}]", v["machine"])
                                           for k, v in r.get("models", {}).items()]:
        lines.append(f"\nMachine{spec}: {m['platform']}, {m['cpu_count']} CPUs, torch "
                     f"{m['torch']} ({m['torch_threads']} threads).")
    return "\n".join(lines)
