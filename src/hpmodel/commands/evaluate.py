"""``hpmodel evaluate DIR``: re-score a trained run on its test split."""

from __future__ import annotations

import json

from hpmodel.commands.common import add_trust_argument


def add_parser(sub) -> None:
    parser = sub.add_parser("evaluate", help="re-score a trained run on its test split")
    parser.add_argument("run_dir", help="a directory written by 'hpmodel train'")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    add_trust_argument(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.reporting.console import print_summary
    from hpmodel.runs.train import evaluate_run

    scores = evaluate_run(args.run_dir, args.split, trust_model_target=args.trust_model_target)
    print_summary(scores, title=f"hpmodel evaluate {args.run_dir}")
    print(json.dumps(scores))
    return 0
