"""``hpmodel demo [--out DIR]``: the journey on embedded data, no network needed."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    parser = sub.add_parser("demo", help="run the whole journey on embedded data")
    parser.add_argument("--out", default="runs/demo", help="directory for the runs and report")
    parser.add_argument("--quick", action="store_true", help="a reduced size, for tests")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.runs.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0
