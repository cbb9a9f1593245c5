"""Adversarial suffix for a model (``--model``, the organism by default): search it (--search)
or load the shipped one, then measure refusal on held-out harmful prompts with it, without it
and with random suffixes.

    python analyses/suffix_search.py                 # re-measure the shipped suffix
    python analyses/suffix_search.py --search ...    # search anew and rewrite the shipped entry
    python analyses/suffix_search.py --render        # redraw the figure from the shipped effect
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from refusal_lens import analysis_scripts as scripts
from refusal_lens.cli_suffix import add_search_options, search_config
from refusal_lens.datasets import load_splits
from refusal_lens.gcg import GCGConfig, gcg_search
from refusal_lens.paths import atomic_write_text
from refusal_lens.plots import suffix_effect_figure
from refusal_lens.suffixes import measure_effect, random_suffix, refused_prompts, shipped_suffix

SHIPPED = Path(__file__).resolve().parents[1] / "refusal_lens" / "data" / "suffixes.json"


def replay_command(args: argparse.Namespace, cfg: GCGConfig, steps: int) -> str:
    """A command that replays this search step for step (no time cap, explicit start)."""
    parts = ["python analyses/suffix_search.py --search", f"--model {args.model}",
             f"--n-prompts {args.n_prompts}", f"--steps {steps}", f"--suffix-len {cfg.n_tokens}",
             f"--topk {cfg.topk}", f"--batch {cfg.batch}", f"--seed {cfg.seed}",
             f"--target {shlex.quote(cfg.target)}", f"--refusal-weight {cfg.refusal_weight}",
             "--no-early-stop" if not cfg.early_stop else "",
             f"--init {shlex.quote(cfg.init)}" if cfg.init else "", "--max-minutes 1e9"]
    return " ".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    p = scripts.analysis_parser(__doc__, __file__)
    p.add_argument("--search", action="store_true", help="run GCG and rewrite the shipped entry")
    add_search_options(p)  # the same options and defaults as `refusal-lens suffix search`
    p.add_argument("--record", action="store_true",
                   help="without --search: re-measure the shipped suffix on the current model "
                        "and record that effect in the shipped entry")
    p.add_argument("--init-shipped", action="store_true",
                   help="start the search from the shipped suffix instead of a random one")
    p.add_argument("--init", default=None, help="start the search from this suffix text")
    scripts.add_count(p, "--n-test", 16, 100,
                      "held-out harmful test prompts the effect is measured on")
    p.add_argument("--n-random", type=int, default=3, metavar="N",
                   help="random suffixes of the same token length (the controls)")
    scripts.add_tokens_option(p, 32, 32)
    p.add_argument("--direction", default="runs/embedded/direction.json",
                   help="the pipeline's direction metadata; its layer and position are recorded "
                        "with the suffix for the suffix analyses")
    p.add_argument("--direction-layer", type=int, default=20,
                   help="layer recorded when --direction does not exist")
    p.add_argument("--out", default="figures/suffix_effect", metavar="STEM",
                   help="output stem of the figure (STEM.html, and STEM.png where a browser for "
                        "static export is installed); the effect is recorded in the shipped entry")
    p.add_argument("--render", action="store_true",
                   help="only redraw the figure from the shipped entry's recorded effect "
                        "(no model is loaded)")
    args = p.parse_args(argv)
    if args.render:
        entry = shipped_suffix(args.model)
        if "effect" not in entry:
            raise SystemExit(f"The shipped {args.model!r} suffix has no recorded effect; run "
                             "with --record first.")
        return render(entry["effect"], entry.get("model", args.model), args.out)

    model = scripts.load_model_for(args.model)
    splits = load_splits(seed=0)
    data = json.loads(SHIPPED.read_text()) if SHIPPED.is_file() else {}
    command = "python analyses/suffix_search.py " + " ".join(argv or sys.argv[1:])
    adapter: dict[str, str] = {}
    if model.info.get("organism"):
        from refusal_lens import embedded

        adapter["adapter_sha256"] = embedded.file_sha256(embedded.ADAPTER_FILE)
    if args.search:
        prompts = refused_prompts(model, splits.harmful_train, args.n_prompts)
        cfg = search_config(args, init=args.init or (data.get(args.model, {}).get("suffix")
                                                     if args.init_shipped else None))
        res = gcg_search(model, prompts, cfg)
        entry = {k: v for k, v in res.to_dict().items() if k not in ("extra",)}
        entry["command"] = command
        entry["reproduce"] = replay_command(args, cfg, res.steps_run)
        entry["model"] = model.name
        entry["model_info"] = {k: model.info.get(k) for k in ("gguf_sha256", "card") if k in
                               model.info} | adapter
        meta = Path(args.direction)
        if meta.is_file():
            d = json.loads(meta.read_text())
            entry["direction"] = {"layer": d["layer"], "position": d["position"],
                                  "source": str(meta)}
        else:
            entry["direction"] = {"layer": args.direction_layer, "position": -1}
        print(f"suffix {res.suffix!r}: loss {res.loss:.3f} after {res.steps_run} steps, "
              f"{res.seconds:.0f} s", file=sys.stderr)
    else:
        entry = shipped_suffix(args.model)
    seeds = [1000 + i for i in range(args.n_random)]
    randoms = [random_suffix(model, len(entry["ids"]), seed=s) for s in seeds]
    test = splits.harmful_test[: args.n_test]
    effect = measure_effect(model, test, entry["suffix"], randoms,
                            max_new_tokens=args.max_new_tokens)
    effect["random_seeds"] = seeds
    effect["prompts"] = f"harmful_test (JailbreakBench), first {len(test)}"
    print(json.dumps({k: v for k, v in effect.items() if k != "refused_without_suffix"},
                     indent=2))
    if args.search or args.record:
        effect |= adapter
        effect["command"] = command
        entry["effect"] = effect
        data[args.model] = entry
        atomic_write_text(SHIPPED, json.dumps(data, indent=2) + "\n")
        print(f"wrote {SHIPPED}", file=sys.stderr)

    return render(effect, model.name, args.out)


def render(effect: dict, model_name: str, out: str) -> int:
    """Draw the suffix-effect figure (with CIs and the random controls set apart)."""
    fig = suffix_effect_figure(effect, title=f"{model_name}: refusal with an adversarial suffix"
                               f"<br><sup>{effect['n_prompts']} held-out harmful prompts, greedy, "
                               f"{effect['max_new_tokens']} new tokens, 95% bootstrap CI; random "
                               "suffixes: same token length as the adversarial one</sup>")
    scripts.write_figure(fig, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
