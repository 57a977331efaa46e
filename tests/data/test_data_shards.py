"""Shard format, WebDataset tar, fsspec reading, interleave, corruption and the file cache.

Remote storage is exercised through fsspec's ``memory://`` filesystem and ``file://``
URLs: fsspec's HTTP filesystem needs aiohttp, which the test environment lacks.
"""

from __future__ import annotations

import io
import tarfile
import uuid

import fsspec
import numpy as np
import pytest
import torch

import hpmodel.data as hd
from hpmodel.data.record_table import RecordTable
from data_helpers import plain, run_epoch

N = 53


@pytest.fixture
def mem_shards():
    root = f"memory://shards-{uuid.uuid4().hex}"
    x = torch.arange(N, dtype=torch.float32)[:, None].repeat(1, 3)
    paths = hd.write_shards((x, torch.arange(N)), root, records_per_shard=8, prefix="train")
    yield root, paths
    fsspec.filesystem("memory").rm(root.replace("memory://", "/"), recursive=True)


def labels(pipe, epoch=None):
    return [int(e[1]) for e in (pipe.set_epoch(epoch) if epoch is not None else None) or pipe]


def test_records_roundtrip_every_supported_type():
    value = {"x": torch.randn(2, 3), "b": torch.tensor([True, False]), "h": torch.ones(2).half(),
             "bf": torch.ones(1, dtype=torch.bfloat16), "e": torch.empty(0, 4),
             "s": torch.tensor(5), "n": np.arange(3, dtype=np.int16),
             "meta": ("name", b"\x00raw", 3, 2.5, True, None, [1, 2])}
    back = hd.decode_element(hd.encode_element(value))
    assert back["x"].equal(value["x"]) and back["bf"].dtype == torch.bfloat16
    assert back["e"].shape == (0, 4) and back["s"].shape == () and back["n"].tolist() == [0, 1, 2]
    assert back["meta"] == ("name", b"\x00raw", 3, 2.5, True, None, [1, 2])
    with pytest.raises(ValueError, match="cannot store a set"):
        hd.encode_element({1, 2})


def test_write_and_read_through_memory_fs(mem_shards):
    root, paths = mem_shards
    assert len(paths) == 7 and paths[0] == f"{root}/train-00000.shard"
    pipe = hd.from_shards(f"{root}/*.shard")
    assert len(pipe) == N
    assert labels(pipe) == list(range(N))
    assert len(hd.read_index(paths[-1])) == N - 48


def test_local_glob_and_file_url(tmp_path):
    hd.write_shards({"v": np.arange(20)}, str(tmp_path), records_per_shard=6)
    by_glob = [int(e["v"]) for e in hd.from_shards(str(tmp_path / "*.shard"))]
    by_url = [int(e["v"]) for e in hd.from_shards(f"file://{tmp_path}/*.shard")]
    by_dir = [int(e["v"]) for e in hd.from_shards(str(tmp_path))]
    assert by_glob == by_url == by_dir == list(range(20))


@pytest.mark.parametrize("calls", [None, 2, 4, hd.AUTOTUNE])
def test_interleave_order_is_deterministic_across_parallelism(mem_shards, calls):
    root, _ = mem_shards
    def build(c):
        return hd.from_shards(f"{root}/*.shard", shuffle_shards=True, seed=1).interleave(
            cycle_length=3, block_length=2, num_parallel_calls=c)
    reference = labels(build(None), epoch=4)
    assert sorted(reference) == list(range(N)) and reference != list(range(N))
    assert labels(build(calls), epoch=4) == reference
    assert labels(build(calls), epoch=5) != reference


def test_sloppy_interleave_keeps_every_record(mem_shards):
    root, _ = mem_shards
    pipe = hd.from_shards(f"{root}/*.shard").interleave(cycle_length=3, num_parallel_calls=4,
                                                        deterministic=False)
    assert sorted(labels(pipe)) == list(range(N))


@pytest.mark.parametrize("cut", [0, 1, 9, 30, N])
def test_interleave_resume_skips_through_the_index(mem_shards, cut):
    root, _ = mem_shards
    build = lambda: (hd.from_shards(f"{root}/*.shard", shuffle_shards=True, seed=3)  # noqa: E731
                     .interleave(cycle_length=3, block_length=2, num_parallel_calls=2))
    reference = labels(build(), epoch=1)
    pipe = build()
    pipe.set_epoch(1)
    it = iter(pipe)
    got = [int(next(it)[1]) for _ in range(cut)]
    state = pipe.state_dict()
    it.close()
    resumed = build()
    resumed.load_state_dict(state)
    assert got + labels(resumed) == reference


@pytest.mark.parametrize("mode", ["element", "file"])
def test_shards_exactly_once_across_two_ranks(mem_shards, mode):
    root, _ = mem_shards
    build = lambda: hd.from_shards(f"{root}/*.shard").interleave(cycle_length=2,  # noqa: E731
                                                                 num_parallel_calls=2)
    parts = [labels(build().shard(2, r, mode=mode)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(N)) and not set(parts[0]) & set(parts[1])


def _corrupt(url: str, record: int) -> int:
    """Flip one payload byte of ``record``; returns the record's byte offset."""
    offset = hd.read_index(url)[record]
    with fsspec.open(url, "rb") as f:
        raw = bytearray(f.read())
    raw[offset + 8 + 3] ^= 0xFF
    with fsspec.open(url, "wb") as f:
        f.write(bytes(raw))
    return offset


def test_corrupt_record_names_shard_and_offset(mem_shards):
    root, paths = mem_shards
    offset = _corrupt(paths[2], 5)
    with pytest.raises(hd.CorruptRecordError) as err:
        labels(hd.from_shards(f"{root}/*.shard"))
    assert "train-00002.shard'" in str(err.value) and f"byte offset {offset}" in str(err.value)
    assert "ignore_errors=True" in str(err.value)
    pipe = hd.from_shards(f"{root}/*.shard", ignore_errors=True).interleave(
        cycle_length=2, num_parallel_calls=2)
    got = labels(pipe)
    assert sorted(got) == [v for v in range(N) if v != 21]
    assert pipe.stats()["skipped_records"] == 1


def test_record_table_reads_each_record_in_one_read_and_checks_it(mem_shards):
    root, paths = mem_shards
    table = RecordTable(paths)
    assert len(table) == N and [int(table[i][1]) for i in range(N)] == list(range(N))
    assert all(b.dtype == np.uint64 for b in table.bounds)  # 8 bytes a record
    assert torch.equal(table[N - 1][0], torch.full((3,), N - 1.0))  # the last: ends at the marker
    offset = _corrupt(paths[6], 4)  # the last record of the last shard
    with pytest.raises(hd.CorruptRecordError, match=f"train-00006.shard' at byte offset {offset}"):
        RecordTable(paths)[N - 1]


def test_truncated_and_foreign_files(tmp_path):
    path = hd.write_shards((np.arange(10),), str(tmp_path), records_per_shard=10)[0]
    from pathlib import Path

    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[:40])
    with pytest.raises(hd.CorruptRecordError, match="truncated"):
        list(hd.read_shard(path))
    Path(path).write_bytes(b"hello world, not a shard at all")
    with pytest.raises(hd.CorruptRecordError, match="not an hpmodel shard"):
        list(hd.read_shard(path))


def test_missing_shards_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards match .*check data.shards"):
        hd.from_shards(str(tmp_path / "nothing-*.shard"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(hd.from_shards([str(tmp_path / "gone.shard")]))


def _write_tar(url: str, start: int, count: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(start, start + count):
            for ext, data in (("txt", f"text {i}".encode()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with fsspec.open(url, "wb") as f:
        f.write(buf.getvalue())


def test_webdataset_tar_shards_through_fsspec():
    root = f"memory://wds-{uuid.uuid4().hex}"
    for k in range(3):
        _write_tar(f"{root}/part-{k}.tar", k * 4, 4)
    pipe = hd.from_shards(f"{root}/*.tar").interleave(cycle_length=2, num_parallel_calls=2)
    samples = list(pipe)
    assert sorted(int(s["cls"]) for s in samples) == list(range(12))
    assert samples[0]["__key__"] == "sample0000" and samples[0]["txt"] == b"text 0"
    assert pipe.cardinality() == hd.UNKNOWN
    with fsspec.open(f"{root}/part-1.tar", "wb") as f:
        f.write(b"\x00garbage" * 10 + b"x" * 600)
    with pytest.raises(hd.CorruptRecordError, match="part-1.tar"):
        list(hd.from_shards(f"{root}/*.tar"))


def test_file_cache_is_reused_by_a_later_run(tmp_path):
    calls = []
    cache = str(tmp_path / "decoded.cache")

    def build():
        return hd.from_tensors(torch.arange(30)).map(
            lambda v: calls.append(1) or (v * 2, int(v))).cache(cache).shuffle(10, seed=0)

    first = run_epoch(build())
    assert len(calls) == 30 and fsspec.filesystem("file").exists(cache)
    second = run_epoch(build())
    assert second == first and len(calls) == 30  # the second run read the file
    pipe = build()
    it = iter(pipe)
    head = [plain(next(it)) for _ in range(7)]
    state = pipe.state_dict()
    it.close()
    resumed = build()
    resumed.load_state_dict(state)
    assert head + run_epoch(resumed) == first


def test_data_write_command(tmp_path, capsys):
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x_train=np.ones((25, 4), np.float32), y_train=np.arange(25))
    status = hd.data_write_main([str(npz), "--out", str(tmp_path / "out"), "--keys",
                                 "x_train,y_train", "--records-per-shard", "10"])
    assert status == 0 and len(capsys.readouterr().out.split()) == 3
    xs, ys = zip(*hd.from_shards(str(tmp_path / "out" / "*.shard")))
    assert [int(y) for y in ys] == list(range(25)) and xs[0].shape == (4,)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.bin").write_bytes(b"abc")
    hd.data_write_main([str(tmp_path / "files"), "--out", f"file://{tmp_path}/fs", "--prefix", "f"])
    data, name = next(iter(hd.from_shards(f"file://{tmp_path}/fs/f-*.shard")))
    assert bytes(data.tolist()) == b"abc" and name.endswith("a.bin")
    with pytest.raises(ValueError, match="not in"):
        hd.data_write_main([str(npz), "--out", str(tmp_path / "o2"), "--keys", "nope"])


def test_shard_pipelines_pickle(mem_shards):
    import pickle

    root, _ = mem_shards
    pipe = hd.from_shards(f"{root}/*.shard", ignore_errors=True).interleave(
        cycle_length=2, num_parallel_calls=2).batch(4)
    assert run_epoch(pickle.loads(pickle.dumps(pipe))) == run_epoch(pipe)
