"""Arguments several subcommands share: config overrides and strategy flags."""

from __future__ import annotations

import argparse

STRATEGY_FLAGS = {  # flag → strategy config key
    "devices": "devices", "nnodes": "nnodes", "node_rank": "node_rank",
    "rdzv_endpoint": "rdzv_endpoint", "max_restarts": "max_restarts",
    "workers": "workers", "servers": "servers",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--strategy", help="strategy name (see 'hpmodel strategies')")
    parser.add_argument("--devices", type=int, help="processes/devices per node")
    parser.add_argument("--nnodes", type=int, help="number of nodes (multi-worker)")
    parser.add_argument("--node-rank", type=int, help="this node's rank (multi-worker)")
    parser.add_argument("--rdzv-endpoint", help="host:port of node 0 (multi-worker)")
    parser.add_argument("--max-restarts", type=int, help="restart the worker group this many times")
    parser.add_argument("--workers", type=int, help="parameter-server workers")
    parser.add_argument("--servers", type=int, help="parameter servers")


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-model-target``: let a run directory's ``model.target`` import its code."""
    parser.add_argument("--trust-model-target", action="store_true",
                        help="import and run the model.target code named in a run directory's "
                             "config.toml (off: such a run is refused; like trust_remote_code)")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """``--strategy`` and strategy flags as ``key=value`` overrides, then every ``--set``."""
    overrides = []
    if args.strategy:
        overrides.append(f'strategy.name="{args.strategy}"')
    for flag, key in STRATEGY_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            text = f'"{value}"' if isinstance(value, str) else str(value)
            overrides.append(f"strategy.{key}={text}")
    return overrides + list(args.overrides)
