"""``write_shards`` and the ``hpmodel data write`` command: arrays or files -> shards.

Built on ``shards.ShardWriter`` (fsspec for storage), ``numpy`` for ``.npz``/``.npy``
input and ``argparse`` for the command line.
"""

from __future__ import annotations

import argparse
import glob as globlib
import os
import sys
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .shards import ShardWriter


def _rows(data: Any) -> Iterator[Any]:
    """Elements of ``data``: rows of equal-length arrays, or the items of an iterable."""
    arrays = (torch.Tensor, np.ndarray)
    if isinstance(data, dict) and data and all(isinstance(v, arrays) for v in data.values()):
        keys = list(data)
        _check_rows([data[k] for k in keys])
        for i in range(len(data[keys[0]])):
            yield {k: data[k][i] for k in keys}
    elif isinstance(data, (tuple, list)) and data and all(isinstance(v, arrays) for v in data):
        _check_rows(list(data))
        for i in range(len(data[0])):
            yield tuple(a[i] for a in data)
    elif isinstance(data, arrays):
        yield from data
    else:
        yield from data


def _check_rows(arrays: list) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"write_shards got arrays with {sorted(lengths)} rows: all arrays "
                         "must have the same first dimension")


def write_shards(data: Any, out_dir: str, records_per_shard: int = 10_000,
                 prefix: str = "shard") -> list[str]:
    """Write ``data`` as ``{out_dir}/{prefix}-00000.shard, ...`` and return their URLs.

    ``data`` is a tuple/list/dict of arrays with equal first dimension (one record per
    row), a single array, or any iterable of elements (e.g. a Pipeline). ``out_dir`` may
    be any fsspec URL.

    Example::

        paths = write_shards((x_train, y_train), "memory://digits", records_per_shard=500)
        pipe = from_shards(paths)
    """
    if not isinstance(records_per_shard, int) or records_per_shard < 1:
        raise ValueError(f"records_per_shard must be a positive int, got {records_per_shard!r}")
    out_dir = str(out_dir).rstrip("/")
    paths: list[str] = []
    writer: ShardWriter | None = None
    try:
        for i, element in enumerate(_rows(data)):
            if i % records_per_shard == 0:
                if writer is not None:
                    paths.append(writer.close())
                writer = ShardWriter(f"{out_dir}/{prefix}-{len(paths):05d}.shard")
            writer.write(element)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        paths.append(writer.close())
    return paths


def _file_records(pattern: str) -> Iterable[tuple]:
    """(file bytes as a uint8 tensor, file name) for each file matched by ``pattern``."""
    names = sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
    if os.path.isdir(pattern):
        names = sorted(os.path.join(d, f) for d, _, fs in os.walk(pattern) for f in fs)
    if not names:
        raise FileNotFoundError(f"no input files match '{pattern}': give an .npz/.npy file, "
                                "a directory, or a glob of files")
    for name in names:
        with open(name, "rb") as f:
            raw = f.read()
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else \
            torch.empty(0, dtype=torch.uint8)
        yield data, name


def _load_input(source: str, keys: list[str] | None) -> Any:
    if source.endswith(".npz"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"input '{source}' does not exist: give an existing .npz file")
        with np.load(source, allow_pickle=False) as npz:
            names = keys or sorted(npz.files)
            missing = [k for k in names if k not in npz.files]
            if missing:
                raise ValueError(f"arrays {missing} are not in '{source}' (it has "
                                 f"{sorted(npz.files)}): pass --keys with existing names")
            return tuple(npz[k] for k in names)
    if source.endswith(".npy"):
        return np.load(source, allow_pickle=False)
    return _file_records(source)


def build_write_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``hpmodel data write`` arguments to ``parser`` (or a new one).

    Example::

        build_write_parser(subparsers.add_parser("write"))
    """
    parser = parser or argparse.ArgumentParser(prog="hpmodel data write",
                                               description="Write arrays or files as shards.")
    parser.add_argument("source", help=".npz / .npy file, a directory, or a glob of files")
    parser.add_argument("--out", required=True, help="output directory or fsspec URL")
    parser.add_argument("--records-per-shard", type=int, default=10_000)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--keys", default=None,
                        help="comma-separated .npz arrays per record, e.g. x_train,y_train")
    return parser


def data_write_main(argv: list[str] | argparse.Namespace | None = None) -> int:
    """Run ``hpmodel data write``; returns the exit status.

    Example::

        data_write_main(["digits.npz", "--out", "shards/", "--keys", "x_train,y_train"])
    """
    args = argv if isinstance(argv, argparse.Namespace) else build_write_parser().parse_args(argv)
    keys = [k.strip() for k in args.keys.split(",")] if args.keys else None
    paths = write_shards(_load_input(args.source, keys), args.out,
                         records_per_shard=args.records_per_shard, prefix=args.prefix)
    print(f"wrote {len(paths)} shard(s) to {args.out}", file=sys.stderr)
    for p in paths:
        print(p)
    return 0
