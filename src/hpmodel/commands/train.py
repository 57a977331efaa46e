"""``hpmodel train CONFIG.toml --out DIR``: train as the config says, write a run directory."""

from __future__ import annotations

import shlex
import sys

from hpmodel.commands.common import add_config_arguments, overrides_from_args


def add_parser(sub) -> None:
    parser = sub.add_parser("train", help="train a model from a TOML config")
    parser.add_argument("config", help="TOML configuration file")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run in --out (its files stay until the new run ends)")
    add_config_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.config import load_config
    from hpmodel.reporting.console import print_summary
    from hpmodel.reporting.train_report import write_train_report
    from hpmodel.runs.train import train_from_config

    cfg = load_config(args.config, overrides_from_args(args))
    summary = train_from_config(cfg, args.out, overwrite=args.overwrite)
    print_summary(summary, title=f"hpmodel train → {args.out}")
    if (summary.get("input") or {}).get("text"):
        print(f"input pipeline: {summary['input']['text']}")
    report = write_train_report(args.out, summary, command=shlex.join(["hpmodel", *sys.argv[1:]]))
    print(f"report: {report}")
    return 0
