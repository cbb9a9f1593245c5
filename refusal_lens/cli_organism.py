"""``refusal-lens organism train|eval``: options parsed here, the work done by
:mod:`refusal_lens.organism` (training) and :mod:`refusal_lens.organism_eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .cliargs import HelpFormatter, add_model_option
from .cliargs import parser as _parser


def organism_cli(argv: Sequence[str] | None = None) -> int:
    """``refusal-lens organism train|eval``."""
    from .configs import ORGANISM_DEFAULTS, ORGANISM_HELP

    p = _parser("refusal-lens organism", "Train or evaluate the refusal model organism: "
                "SmolLM2-135M-Instruct plus a LoRA safety fine-tune.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fine-tune the LoRA safety adapter",
                       formatter_class=HelpFormatter,
                       description="Fine-tune the LoRA safety adapter on the organism training "
                                   "splits and write it with its card (card.json).")
    t.add_argument("--seed", type=int, default=0, help="seed of the data order and LoRA init")
    t.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory (default: the package's organism/ folder)")
    for k, v in ORGANISM_DEFAULTS.items():
        t.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v, help=ORGANISM_HELP[k])
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    t.add_argument("--eval-n", type=int, default=None, metavar="N",
                   help="evaluate on the first N prompts of each test set (default: all)")
    e = sub.add_parser("eval", help="refusal rates and capability check",
                       formatter_class=HelpFormatter,
                       description="Refusal rates on the held-out harmful and harmless test "
                                   "prompts and the harmless cross-entropy, as JSON.")
    add_model_option(e)
    e.add_argument("--n", type=int, default=None, metavar="N",
                   help="first N prompts of each test set (default: all)")
    args = p.parse_args(argv)
    if args.cmd == "train":
        from . import organism

        hp = {k: getattr(args, k) for k in ORGANISM_DEFAULTS}
        card = organism.train_organism(seed=args.seed, out_dir=args.out, evaluate=not args.no_eval,
                                       eval_n=args.eval_n, **hp)
        print(json.dumps({k: card[k] for k in ("training", "evaluation") if k in card}, indent=2))
        return 0
    from .model import load_model
    from .organism_eval import evaluate_organism

    print(json.dumps(evaluate_organism(load_model(args.model), n=args.n), indent=2))
    return 0
