"""``hpmodel strategies``: list the registered strategies."""

from __future__ import annotations


def add_parser(sub) -> None:
    parser = sub.add_parser("strategies", help="list the registered strategies")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.strategies import available_strategies, strategy_class

    for name in available_strategies():
        cls = strategy_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} {doc}")
    return 0
