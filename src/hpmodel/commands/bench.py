"""``hpmodel bench NAME --out DIR``: run a benchmark; each compares against plain PyTorch."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from hpmodel.bench import available_benchmarks

    parser = sub.add_parser("bench", help="run a benchmark (table, JSON and PNG plot)")
    parser.add_argument("name", choices=available_benchmarks() or None, metavar="NAME",
                        help=f"one of: {', '.join(available_benchmarks())}")
    parser.add_argument("--out", required=True, help="directory for NAME.json, NAME.png, report.md")
    parser.add_argument("--quick", action="store_true", help="a small size that runs in seconds on CPU")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="benchmark-specific option, e.g. --set devices=2 (repeatable)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.bench import run_benchmark
    from hpmodel.kernel.schema import apply_override

    options: dict = {}
    for item in args.options:
        apply_override(options, item)
    run_benchmark(args.name, Path(args.out), quick=args.quick, **options)
    return 0
