"""Compare two `refusal-lens run` directories: are their results the same, and which was faster?

    python benchmarks/compare_runs.py RUN_A RUN_B [--out FILE.json]

Checks what a change that should not alter results must keep: the verdict, each seed's chosen
layer and position, every pooled and per-seed refusal rate with its CI (exactly: they are counts
over the same greedy completions), capability CE and KL (relative difference <= 1e-6), the
direction of each seed (cosine >= 0.99999) and every completion (identical text and judgement).
Timing is reported, never checked: total and per-stage seconds of both runs and their ratio
(B / A), from each report's ``timing`` and per-seed ``seconds``. Exit status 1 when anything
differs, so the script can gate a change.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from refusal_lens.directions import Direction

REL_TOL = 1e-6
MIN_COSINE = 0.99999


def _report(run: Path) -> dict:
    path = run / "report.json"
    if not path.is_file():
        raise SystemExit(f"{run} is not a finished run directory (no report.json): "
                         "pass the --out directory of a finished `refusal-lens run`")
    return json.loads(path.read_text())


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists as {'a.b.0': leaf}, so two reports can be compared key by key."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out: dict[str, object] = {}
    for k, v in items:
        out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def compare_reports(a: dict, b: dict) -> dict:
    """Differences between two reports' results (timing excluded)."""
    diffs: list[str] = []
    if a["verdict"] != b["verdict"]:
        diffs.append(f"verdict {a['verdict']} vs {b['verdict']}")
    chosen = {s: (a["directions"].get(s), b["directions"].get(s))
              for s in sorted(set(a["directions"]) | set(b["directions"]))}
    for s, (da, db) in chosen.items():
        if da is None or db is None or (da["layer"], da["position"]) != (db["layer"], db["position"]):
            diffs.append(f"seed {s}: chosen {da} vs {db}")
    rates_a = _flatten({"rates": a["rates"], "seeds": [x["rates"] for x in a["seeds"]],
                        "category_rates": a.get("category_rates")})
    rates_b = _flatten({"rates": b["rates"], "seeds": [x["rates"] for x in b["seeds"]],
                        "category_rates": b.get("category_rates")})
    for k in sorted(set(rates_a) | set(rates_b)):
        if rates_a.get(k) != rates_b.get(k):
            diffs.append(f"{k}: {rates_a.get(k)} vs {rates_b.get(k)}")
    cap_a = _flatten({"capability": a["capability"], "seeds": [x["capability"] for x in a["seeds"]]})
    cap_b = _flatten({"capability": b["capability"], "seeds": [x["capability"] for x in b["seeds"]]})
    worst = 0.0
    for k in sorted(set(cap_a) | set(cap_b)):
        va, vb = cap_a.get(k), cap_b.get(k)
        if not (isinstance(va, (int, float)) and isinstance(vb, (int, float))):
            if va != vb:
                diffs.append(f"{k}: {va} vs {vb}")
            continue
        d = _rel_diff(float(va), float(vb))
        worst = max(worst, d)
        if d > REL_TOL or math.isnan(d):
            diffs.append(f"{k}: {va} vs {vb} (relative difference {d:.2e} > {REL_TOL:g})")
    rates = {k: v for k, v in _flatten({"rates": a["rates"]}).items() if k.endswith(".rate")}
    return {"chosen": {s: da for s, (da, _) in chosen.items()}, "verdict": a["verdict"],
            "rates_a": rates, "capability_max_rel_diff": worst, "differences": diffs}


def compare_directions(run_a: Path, run_b: Path) -> tuple[dict[str, float], list[str]]:
    """Cosine between the two runs' direction files of the same name (one per seed)."""
    names = sorted(p.name for p in run_a.glob("direction*.safetensors"))
    names_b = sorted(p.name for p in run_b.glob("direction*.safetensors"))
    diffs = [] if names == names_b else [f"direction files {names} vs {names_b}"]
    cosines: dict[str, float] = {}
    for name in sorted(set(names) & set(names_b)):
        va = Direction.load(run_a / name.removesuffix(".safetensors")).vector.double()
        vb = Direction.load(run_b / name.removesuffix(".safetensors")).vector.double()
        cos = float(torch.dot(va, vb) / (va.norm() * vb.norm()))
        cosines[name] = cos
        if cos < MIN_COSINE:
            diffs.append(f"{name}: cosine {cos:.7f} < {MIN_COSINE}")
    return cosines, diffs


def compare_completions(run_a: Path, run_b: Path) -> tuple[int, list[str]]:
    """Every completion line (arm, seed, prompt, text, judgement) must appear in both runs."""
    la = sorted((run_a / "completions.jsonl").read_text().splitlines())
    lb = sorted((run_b / "completions.jsonl").read_text().splitlines())
    if la == lb:
        return len(la), []
    only_a = len(set(la) - set(lb))
    return len(la), [f"completions differ: {len(la)} vs {len(lb)} lines, {only_a} of A's not in B"]


def _seconds(report: dict) -> dict[str, float]:
    out = {f"timing.{k}": v for k, v in report["timing"].items()}
    for s in report["seeds"]:
        out |= {f"seed{s['seed']}.{k}": v for k, v in s["seconds"].items()}
    return out


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """Everything above in one record; ``same`` is True when no result differs."""
    a, b = _report(run_a), _report(run_b)
    result = compare_reports(a, b)
    result["direction_cosines"], d_dirs = compare_directions(run_a, run_b)
    result["completions"], d_comp = compare_completions(run_a, run_b)
    result["differences"] += d_dirs + d_comp
    sa, sb = _seconds(a), _seconds(b)
    result["seconds"] = {k: {"a": sa.get(k), "b": sb.get(k),
                             "ratio_b_over_a": (sb[k] / sa[k] if k in sa and k in sb and sa[k] else None)}
                         for k in sorted(set(sa) | set(sb))}
    result["runs"] = {"a": str(run_a), "b": str(run_b)}
    result["same"] = not result["differences"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path, help="first finished run directory (the reference)")
    p.add_argument("run_b", type=Path, help="second finished run directory (compared to the first)")
    p.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON here")
    args = p.parse_args(argv)
    result = compare_runs(args.run_a, args.run_b)
    text = json.dumps(result, indent=1)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    total = result["seconds"].get("timing.total_s", {})
    print(f"same results: {result['same']}; completions {result['completions']}; "
          f"total seconds {total.get('a')} vs {total.get('b')}")
    for d in result["differences"]:
        print("  DIFFERENT:", d)
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
