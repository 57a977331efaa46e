"""``hpmodel data write --text/--corpus``: byte-level token windows, a held-out split by
file, and the gzip baseline of the held-out text."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch

from conftest import run_cli
from hpmodel.data import from_shards, read_shard, write_text_shards
from hpmodel.data.writer import split_by_file, text_files, text_stream, text_windows
from hpmodel.datasets.text import gzip_bits_per_byte, stdlib_corpus


def _corpus(tmp_path, count: int = 6) -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / "text" / f"doc{i}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes((f"file {i}: " + "the quick brown fox jumps over the lazy dog. " * (i + 3)).encode())
        paths.append(str(path))
    return paths


def test_windows_are_shifted_by_one_and_cover_every_target_byte_once():
    stream = np.frombuffer(b"hello world, hello shards", dtype=np.uint8)
    windows = list(text_windows(stream, 4))
    assert len(windows) == (len(stream) - 1) // 4
    first = windows[0]
    assert bytes(first["input_ids"].tolist()) == b"hell" and bytes(first["labels"].tolist()) == b"ello"
    targets = b"".join(bytes(w["labels"].tolist()) for w in windows)
    assert targets == stream[1:1 + len(windows) * 4].tobytes()
    x, y = next(text_windows(stream, 4, torch.int16, record="tuple"))
    assert x.dtype == torch.int16 and torch.equal(x[1:], y[:-1])


def test_split_is_by_whole_file_and_deterministic(tmp_path):
    files = _corpus(tmp_path, 10)
    train, val = split_by_file(files, 0.3, seed=1)
    assert val and train and not set(train) & set(val) and sorted(train + val) == sorted(files)
    assert (train, val) == split_by_file(list(reversed(files)), 0.3, seed=1)
    assert split_by_file(files, 0.0) == (sorted(files), [])
    with pytest.raises(ValueError, match="at least 2 files"):
        split_by_file(files[:1], 0.1)


def test_written_shards_stream_back_as_dict_batches(tmp_path):
    files = _corpus(tmp_path)
    manifest = write_text_shards(files, str(tmp_path / "shards"), seq_len=16, val_fraction=0.3,
                                 records_per_shard=10, measures={"gzip_bits_per_byte": gzip_bits_per_byte})
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert not set(train["files"]) & set(val["files"])
    assert json.loads((tmp_path / "shards" / "text.json").read_text()) == manifest
    records = [r for url in val["shards"] for r in read_shard(url)]
    assert len(records) == val["windows"] and records[0]["input_ids"].dtype == torch.uint8
    targets = b"".join(bytes(r["labels"].tolist()) for r in records)
    stream = text_stream(val["files"]).tobytes()
    assert targets == stream[1:1 + len(targets)]  # the held-out text itself, once
    assert val["gzip_bits_per_byte"] == pytest.approx(8 * len(gzip.compress(targets, 9)) / len(targets))
    batch = next(iter(from_shards(train["shards"]).batch(4)))
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (4, 16)


def test_stdlib_corpus_is_sorted_capped_and_outside_site_packages():
    files = stdlib_corpus(max_bytes=200_000)
    assert files == sorted(files) and all(f.endswith(".py") for f in files)
    assert sum(os.path.getsize(f) for f in files) <= 200_000
    assert not any("site-packages" in f for f in files)
    assert 0 < gzip_bits_per_byte(b"".join(open(f, "rb").read() for f in files)) < 4


def test_cli_writes_the_stdlib_corpus_with_a_gzip_baseline(tmp_path):
    out = tmp_path / "shards"
    proc = run_cli("data", "write", "--corpus", "stdlib", "--max-bytes", "300000", "--seq-len", "64",
                   "--val-fraction", "0.2", "--out", str(out), check=True)
    manifest = json.loads((out / "text.json").read_text())
    assert manifest["vocab_size"] == 256 and manifest["seq_len"] == 64
    assert set(manifest["splits"]) == {"train", "val"} and "gzip_bits_per_byte" in proc.stderr
    assert not set(manifest["splits"]["train"]["files"]) & set(manifest["splits"]["val"]["files"])
    assert text_files([str(out / "*.shard")]) == sorted(str(p) for p in out.glob("*.shard"))


def test_no_matching_text_is_one_clear_line(tmp_path):
    proc = run_cli("data", "write", "--text", str(tmp_path / "nothing-*.txt"), "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no text files match" in proc.stderr
    proc = run_cli("data", "write", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "needs a SOURCE" in proc.stderr
