"""``hpmodel data write SOURCE --out DIR``: write arrays or files as toolkit shards."""

from __future__ import annotations


def add_parser(sub) -> None:
    from hpmodel.data import build_write_parser

    parser = sub.add_parser("data", help="input-pipeline tools (write shards)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    write = build_write_parser(verbs.add_parser("write", help="write arrays or files as shards"))
    write.set_defaults(run=run_write)


def run_write(args) -> int:
    from hpmodel.data import data_write_main

    try:
        return data_write_main(args)
    except (FileNotFoundError, ValueError) as error:
        from hpmodel.kernel.errors import HpmodelError

        raise HpmodelError(str(error)) from None
