"""The pipeline's figures: candidate scores (layer x position) and refusal rates under ablation /
addition / orthogonalization with random-direction controls, from a `refusal-lens run` directory.

Reuses ``--run`` (default ``runs/embedded``) when it holds a finished report; otherwise runs the
pipeline there first (``--rerun`` forces that). Renders the figures from the run's JSON into
figures/ and copies the report beside them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from refusal_lens import analysis_scripts as scripts
from refusal_lens.pipeline import run_pipeline
from refusal_lens.plots import candidate_scores_figure, refusal_rates_figure


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__)
    p.add_argument("--run", default="runs/embedded", metavar="DIR",
                   help="run directory to read or create")
    p.add_argument("--rerun", action="store_true", help="run the pipeline even if a report exists")
    p.add_argument("--out", default="figures", metavar="DIR", help="where the figures are copied")
    args = p.parse_args(argv)
    run = Path(args.run)
    if args.rerun or not (run / "report.json").is_file():
        run_pipeline(args.model, run, force=True)
    out = Path(args.out)
    report = json.loads((run / "report.json").read_text())
    scores = json.loads((run / "scores.json").read_text())["seeds"]
    first = str(report["config"]["seeds"][0])
    sel = scores[first]
    scripts.write_figure(candidate_scores_figure(
        sel["candidates"], report.get("position_tokens"), (sel["layer"], sel["position"]),
        title=f"Candidate directions, {report['model']}, seed {first}"), out / "candidate_scores")
    n_seeds = len(report["config"]["seeds"])
    scripts.write_figure(refusal_rates_figure(
        report["rates"], title=f"Refusal rates, {report['model']} (95% bootstrap CI, "
                               f"{n_seeds} seed(s), held-out prompts)"), out / "refusal_rates")
    for name in ("report.md", "direction.json"):
        shutil.copyfile(run / name, out / f"pipeline_{name}")
        print(f"wrote {out / f'pipeline_{name}'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
