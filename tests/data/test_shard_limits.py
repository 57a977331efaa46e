"""Malicious shards, made here, are refused with one line naming the file and the member or
byte offset, in bounded memory: a gzip bomb in a .tar.gz, a forged member size, a huge tar
header, and records whose byte length does not match their shape and dtype."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tracemalloc

import pytest
import torch

from hpmodel.data import ShardWriter, from_shards, read_shard, read_tar
from hpmodel.data.core import CorruptRecordError
from hpmodel.data.records import TENSOR, RecordShapeError, decode_element, encode_element

MiB = 1 << 20


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read (the bomb is never held whole, even here)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_gzip_bomb_member_is_refused_after_the_cap_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("000000.bin")
        info.size = 96 * MiB
        tar.addfile(info, Zeros(info.size))
    assert bomb.stat().st_size < MiB  # a small file...
    with pytest.raises(CorruptRecordError) as raised:
        next(read_tar(str(bomb), max_member_bytes=8 * MiB))  # ...that inflates to 96 MiB
    message = str(raised.value)
    assert str(bomb) in message and "'000000.bin'" in message and "max_member_bytes" in message
    assert len(message.splitlines()) == 1
    peak = peak_bytes(lambda: pytest.raises(CorruptRecordError, next,
                                            read_tar(str(bomb), max_member_bytes=8 * MiB)))
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB held"  # one 4 MiB read block; refused from its header


def test_a_forged_member_size_beyond_the_default_cap_is_refused_at_once(tmp_path):
    info = tarfile.TarInfo("000000.cls")
    info.size = 3 << 30  # claims 3 GiB, holds a few bytes: the default 1 GiB cap refuses it
    forged = tmp_path / "forged.tar.gz"
    forged.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"7" + bytes(1023)))
    with pytest.raises(CorruptRecordError, match=r"forged\.tar\.gz': member '000000\.cls' "
                                                 r"decompresses to 3221225472 bytes"):
        next(read_shard(str(forged)))


def test_a_huge_tar_header_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "header.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("000000.cls")
        info.pax_headers = {"comment": "x" * (48 * MiB)}  # a pax header is read whole by tarfile
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    holder = {}

    def read():
        with pytest.raises(CorruptRecordError) as raised:
            next(read_tar(str(path), max_member_bytes=4 * MiB))
        holder["message"] = str(raised.value)

    peak = peak_bytes(read)
    assert str(path) in holder["message"] and "first member" in holder["message"]
    assert peak < 24 * MiB, f"{peak / MiB:.1f} MiB held for a 48 MiB header"


def test_members_within_the_cap_still_read(tmp_path):
    path = tmp_path / "ok.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for key, data in (("a", b"x" * 1000), ("b", b"y" * 1000)):
            info = tarfile.TarInfo(f"{key}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(read_tar(str(path), max_member_bytes=1000))
    assert [s["__key__"] for s in samples] == ["a", "b"] and samples[1]["bin"] == b"y" * 1000


def test_from_shards_passes_max_member_bytes_to_the_tar_reader(tmp_path):
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("000000.bin")
        info.size = 4000
        tar.addfile(info, io.BytesIO(b"z" * info.size))
    with pytest.raises(CorruptRecordError, match=r"'000000\.bin' decompresses to 4000 bytes, "
                                                 r"more than the 1000-byte cap"):
        list(from_shards(str(path), max_member_bytes=1000))
    with pytest.raises(CorruptRecordError, match="1000-byte cap"):  # kept by interleave()
        list(from_shards(str(path), max_member_bytes=1000).interleave(cycle_length=2,
                                                                      num_parallel_calls=2))
    assert [s["bin"] for s in from_shards(str(path))] == [b"z" * 4000]


def forged_tensor(shape: tuple, nbytes: int, data: bytes = b"", code: int = 0) -> bytes:
    return (struct.pack("<BBB", TENSOR, code, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
            + struct.pack("<Q", nbytes) + data)


@pytest.mark.parametrize("payload, why", [
    (forged_tensor((1000, 1000), 0), "needs 4000000 bytes, the record says 0"),
    (forged_tensor((2, 3), 12, bytes(12)), "needs 24 bytes, the record says 12"),
    (forged_tensor((4,), 16, bytes(8)), "only 8 remain"),
    (forged_tensor((-4,), 0), "negative size"),
    (forged_tensor((2,), 8, bytes(8), code=99), "unknown tensor dtype code 99"),
])
def test_a_record_whose_bytes_do_not_match_its_shape_is_refused(tmp_path, payload, why):
    url = str(tmp_path / "forged.shard")
    with ShardWriter(url) as writer:
        writer.write((torch.ones(2), 1))
        writer.write_payload(payload)  # a valid checksum over forged contents
    reader = read_shard(url)
    assert torch.equal(next(reader)[0], torch.ones(2))
    with pytest.raises(CorruptRecordError) as raised:
        next(reader)
    message = str(raised.value)
    assert url in message and why in message and len(message.splitlines()) == 1
    offset = 8 + 8 + len(encode_element((torch.ones(2), 1)))  # magic, then the first record
    assert f"byte offset {offset}" in message


def test_empty_tensors_still_round_trip():
    for tensor in (torch.zeros(0), torch.zeros(3, 0, 2, dtype=torch.int64)):
        decoded = decode_element(encode_element(tensor))
        assert decoded.shape == tensor.shape and decoded.dtype == tensor.dtype
    with pytest.raises(RecordShapeError):
        decode_element(forged_tensor((3,), 0))
