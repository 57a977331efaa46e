"""The ``hpmodel`` command: a thin shell over the public API.

Each subcommand lives in its own module under ``hpmodel.commands`` with ``add_parser``
and ``run``; this file only collects them. A user error (:class:`HpmodelError`) prints
one line and exits with status 2, without a traceback.

Example::

    hpmodel train examples/digits.toml --strategy mirrored --devices 2 --out runs/digits
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hpmodel.errors import HpmodelError

COMMANDS = ("train", "evaluate", "demo", "strategies")


def build_parser() -> argparse.ArgumentParser:
    from hpmodel import __version__

    parser = argparse.ArgumentParser(prog="hpmodel", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpmodel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"hpmodel.commands.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except HpmodelError as error:
        print(f"hpmodel: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("hpmodel: interrupted", file=sys.stderr)
        return 130
