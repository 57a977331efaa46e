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
import pkgutil
import sys

from hpmodel.kernel.errors import HpmodelError


def command_modules() -> list[str]:
    """Every module of ``hpmodel.commands`` that defines ``add_parser`` is a subcommand."""
    import hpmodel.commands as package

    return sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                  if info.name not in ("common",) and not info.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    from hpmodel import __version__

    parser = argparse.ArgumentParser(prog="hpmodel", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpmodel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        module = importlib.import_module(f"hpmodel.commands.{name}")
        if hasattr(module, "add_parser"):
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
