"""``write_shards`` and the ``hpmodel data write`` command: arrays or files -> shards.

Built on ``shards.ShardWriter`` (fsspec for storage), ``numpy`` for ``.npz``/``.npy``
input and ``argparse`` for the command line.

Text mode (``--text FILE_OR_GLOB...``, :func:`write_text_shards`) turns text files into
byte-level token windows for a causal language model: no vocabulary to download, token
= byte (vocabulary 256). Files are split into train and validation *by file*, so the two
never share a line.
"""

from __future__ import annotations

import argparse
import glob as globlib
import os
import json
import random
import sys
from typing import Any, Callable, Iterable, Iterator

import fsspec
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
    parser.add_argument("source", nargs="?", help=".npz / .npy file, a directory, or a glob of files")
    parser.add_argument("--out", required=True, help="output directory or fsspec URL")
    parser.add_argument("--records-per-shard", type=int, default=10_000)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--keys", default=None,
                        help="comma-separated .npz arrays per record, e.g. x_train,y_train")
    text = parser.add_argument_group("text mode: byte-level token windows for a language model")
    text.add_argument("--text", nargs="+", metavar="FILE_OR_GLOB", help="text files (globs, ** included)")
    text.add_argument("--corpus", choices=["stdlib"], help="a built-in corpus instead of --text: "
                      "the Python standard library's own *.py files")
    text.add_argument("--seq-len", type=int, default=256, help="tokens per example (windows of seq-len + 1)")
    text.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of the bytes held out, whole files only (0: no val split)")
    text.add_argument("--max-bytes", type=int, default=0, help="cap on the text read (0: no cap)")
    text.add_argument("--seed", type=int, default=0, help="which files are held out")
    text.add_argument("--token-dtype", choices=sorted(TOKEN_DTYPES), default="uint8")
    text.add_argument("--record", choices=["dict", "tuple"], default="dict",
                      help='dict {"input_ids", "labels"} or a tuple (input_ids, labels)')
    return parser


def data_write_main(argv: list[str] | argparse.Namespace | None = None,
                    measures: dict[str, Callable[[bytes], float]] | None = None) -> int:
    """Run ``hpmodel data write``; returns the exit status. ``measures`` (text mode) are
    recorded for each split's target bytes in ``text.json`` (e.g. a gzip baseline).

    Example::

        data_write_main(["digits.npz", "--out", "shards/", "--keys", "x_train,y_train"])
    """
    args = argv if isinstance(argv, argparse.Namespace) else build_write_parser().parse_args(argv)
    if getattr(args, "text", None) or getattr(args, "corpus", None):
        return _text_main(args, measures)
    if not args.source:
        raise ValueError("hpmodel data write needs a SOURCE (.npz, .npy, directory or glob) or "
                         "--text FILE_OR_GLOB...: give one")
    keys = [k.strip() for k in args.keys.split(",")] if args.keys else None
    paths = write_shards(_load_input(args.source, keys), args.out,
                         records_per_shard=args.records_per_shard, prefix=args.prefix)
    print(f"wrote {len(paths)} shard(s) to {args.out}", file=sys.stderr)
    for p in paths:
        print(p)
    return 0


# -- text mode -----------------------------------------------------------------------------
TOKEN_DTYPES = {"uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
                "int64": torch.int64}
DOCUMENT_END = b"\0"  # token 0 ends each file, like GPT-2's <|endoftext|>


def text_files(patterns: Iterable[str], max_bytes: int = 0) -> list[str]:
    """The files ``patterns`` (paths, directories or globs) name, sorted, deduplicated, up
    to ``max_bytes`` in total (0: no cap).

    Example::

        text_files(["docs/**/*.md"], max_bytes=1_000_000)
    """
    names: set[str] = set()
    for pattern in patterns:
        if os.path.isfile(pattern):  # a path is itself, even with glob characters in it
            found = [pattern]
        elif os.path.isdir(pattern):
            found = [os.path.join(d, f) for d, _, fs in os.walk(pattern) for f in fs]
        else:
            found = globlib.glob(pattern, recursive=True)
        matched = [p for p in found if os.path.isfile(p)]
        if not matched:
            raise FileNotFoundError(f"no text files match '{pattern}': give files, a directory "
                                    "or a glob such as 'corpus/**/*.txt'")
        names.update(matched)
    chosen, total = [], 0
    for name in sorted(names):
        size = os.path.getsize(name)
        if max_bytes and total + size > max_bytes and chosen:
            break
        chosen.append(name)
        total += size
    return chosen


def split_by_file(files: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train files, val files): whole files, drawn in a seeded order until the val files
    hold ``val_fraction`` of the bytes; both lists sorted.

    Example::

        train, val = split_by_file(files, 0.1, seed=0)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction = {val_fraction} must be in [0, 1)")
    if val_fraction == 0:
        return sorted(files), []
    if len(files) < 2:
        raise ValueError(f"a held-out split by file needs at least 2 files, got {len(files)}: "
                         "give more files or --val-fraction 0")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    sizes = {f: max(os.path.getsize(f), 1) for f in order}
    target, val, held = val_fraction * sum(sizes.values()), [], 0
    for name in order[:-1]:  # the last one always trains
        if held >= target:
            break
        val.append(name)
        held += sizes[name]
    return sorted(set(files) - set(val)), sorted(val)


def text_stream(files: list[str]) -> np.ndarray:
    """The bytes of ``files`` in order, each followed by :data:`DOCUMENT_END`, as uint8."""
    parts = []
    for name in files:
        with open(name, "rb") as f:
            parts.append(f.read())
        parts.append(DOCUMENT_END)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def text_windows(stream: np.ndarray, seq_len: int, dtype: torch.dtype = torch.uint8,
                 record: str = "dict") -> Iterator[Any]:
    """Windows ``w`` of ``seq_len + 1`` tokens at stride ``seq_len`` (every byte after the
    first is a label exactly once; the tail shorter than a window is dropped), as
    ``{"input_ids": w[:-1], "labels": w[1:]}`` or the tuple ``(w[:-1], w[1:])``.

    Example::

        next(text_windows(np.frombuffer(b"hello world", np.uint8), 4))["labels"]  # b"ello"
    """
    tokens = torch.tensor(stream, dtype=dtype)  # one copy, converted as it is made
    for start in range(0, (len(tokens) - 1) // seq_len * seq_len, seq_len):
        window = tokens[start:start + seq_len + 1]
        inputs, labels = window[:-1].clone(), window[1:].clone()
        yield {"input_ids": inputs, "labels": labels} if record == "dict" else (inputs, labels)


def write_text_shards(files: list[str], out_dir: str, *, seq_len: int = 256,
                      val_fraction: float = 0.1, seed: int = 0, records_per_shard: int = 10_000,
                      token_dtype: str = "uint8", record: str = "dict",
                      measures: dict[str, Callable[[bytes], float]] | None = None) -> dict:
    """Write ``train-*.shard`` and ``val-*.shard`` windows of ``files`` and ``text.json``
    (what was written: files per split, bytes, windows, and ``measures`` of each split's
    target bytes); returns that manifest.

    Example::

        write_text_shards(text_files(["notes/*.txt"]), "shards/", seq_len=128)
    """
    if seq_len < 1:
        raise ValueError(f"--seq-len = {seq_len} must be at least 1")
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"token dtype '{token_dtype}' is unknown: use {', '.join(TOKEN_DTYPES)}")
    out_dir = str(out_dir).rstrip("/")
    manifest: dict[str, Any] = {"format": "bytes", "vocab_size": 256, "seq_len": seq_len,
                                "token_dtype": token_dtype, "record": record,
                                "document_end_token": DOCUMENT_END[0], "splits": {}}
    for split, names in zip(("train", "val"), split_by_file(files, val_fraction, seed)):
        if not names:
            continue
        stream = text_stream(names)
        windows = (len(stream) - 1) // seq_len
        if windows == 0:
            raise ValueError(f"the {split} text ({len(stream)} bytes) is shorter than one window "
                             f"of {seq_len + 1}: lower --seq-len or give more text")
        targets = stream[1:1 + windows * seq_len].tobytes()
        shards = write_shards(text_windows(stream, seq_len, TOKEN_DTYPES[token_dtype], record),
                              out_dir, records_per_shard=records_per_shard, prefix=split)
        manifest["splits"][split] = {
            "files": names, "bytes": len(stream), "windows": windows, "target_bytes": len(targets),
            "shards": shards, **{k: fn(targets) for k, fn in (measures or {}).items()}}
    fs, path = fsspec.core.url_to_fs(f"{out_dir}/text.json")
    with fs.open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _text_main(args: argparse.Namespace, measures) -> int:
    if args.corpus and not args.text:
        raise ValueError(f"--corpus {args.corpus} is resolved by the hpmodel command: run "
                         "'hpmodel data write --corpus ...' or pass --text FILES")
    files = text_files(args.text, args.max_bytes)
    manifest = write_text_shards(files, args.out, seq_len=args.seq_len, val_fraction=args.val_fraction,
                                 seed=args.seed, records_per_shard=args.records_per_shard,
                                 token_dtype=args.token_dtype, record=args.record, measures=measures)
    for split, info in manifest["splits"].items():
        extra = "".join(f", {k} {info[k]:.3f}" for k in (measures or {}))
        print(f"{split}: {len(info['files'])} file(s), {info['bytes']:,} bytes, {info['windows']:,} "
              f"windows of {args.seq_len} tokens in {len(info['shards'])} shard(s){extra}", file=sys.stderr)
        for p in info["shards"]:
            print(p)
    return 0
