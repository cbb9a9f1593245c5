"""The pipeline's figures: candidate scores (layer x position) and refusal rates under ablation /
addition / orthogonalization with random-direction controls, from a `refusal-lens run` directory.

Reuses ``--run`` (default ``runs/embedded``) when it holds a finished report; otherwise runs the
pipeline there first (``--rerun`` forces that). Copies the figures and the report into figures/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from refusal_lens.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--run", default="runs/embedded", help="run directory to read or create")
    p.add_argument("--rerun", action="store_true", help="run the pipeline even if a report exists")
    p.add_argument("--out", default="figures", help="where the figures are copied")
    args = p.parse_args(argv)
    run = Path(args.run)
    if args.rerun or not (run / "report.json").is_file():
        run_pipeline(args.model, run, force=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("candidate_scores.html", "candidate_scores.png", "refusal_rates.html",
                 "refusal_rates.png", "report.md", "direction.json"):
        src = run / name
        if src.is_file():
            dst = out / (name if name.endswith((".html", ".png")) else f"pipeline_{name}")
            shutil.copyfile(src, dst)
            print(f"wrote {dst}", file=sys.stderr)
        elif name.endswith(".png"):
            print(f"no {name} in {run} (static export unavailable); HTML only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
