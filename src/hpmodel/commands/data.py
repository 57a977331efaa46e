"""``hpmodel data write SOURCE --out DIR``: write arrays or files as toolkit shards;
``hpmodel data write --text FILES... | --corpus stdlib --seq-len N --out DIR``: byte-level
token windows for a language model, with a held-out split by file and its gzip baseline."""

from __future__ import annotations


def add_parser(sub) -> None:
    from hpmodel.data import build_write_parser

    parser = sub.add_parser("data", help="input-pipeline tools (write shards)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    write = build_write_parser(verbs.add_parser("write", help="write arrays or files as shards"))
    write.set_defaults(run=run_write)


def run_write(args) -> int:
    from hpmodel.data import data_write_main
    from hpmodel.datasets.text import gzip_bits_per_byte, stdlib_corpus
    from hpmodel.kernel.errors import HpmodelError

    try:
        if args.corpus == "stdlib":
            args.text = (args.text or []) + stdlib_corpus(args.max_bytes)
        # Text mode records gzip -9 on each split's target bytes: the baseline an LM must beat.
        return data_write_main(args, measures={"gzip_bits_per_byte": gzip_bits_per_byte})
    except (FileNotFoundError, ValueError) as error:
        raise HpmodelError(str(error)) from None
