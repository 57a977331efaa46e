"""The hpmodel shard format and WebDataset .tar shards: reading and writing.

Storage goes through ``fsspec`` (local paths, ``file://``, ``memory://``, ``s3://``,
``gs://``... whatever fsspec has a filesystem for); checksums are ``zlib.crc32``; tar
shards are read with the standard library's ``tarfile`` in streaming mode, over a
``zlib`` decompressor driven here with a size cap: no member (nor tar header) may
decompress to more than ``max_member_bytes`` (1 GiB unless told), so a small
``.tar.gz`` cannot blow up memory. Shards are read front to back in large blocks,
never seeking except to start a resume.

Layout of a ``.shard`` file (little-endian; see docs/data.md)::

    b"HPSHARD1"                                   magic, 8 bytes
    { u32 length | u32 crc32(payload) | payload } one per record (payload: records.py)
    u32 0xFFFFFFFF                                end of records
    u64 offset[count]                             byte offset of each record header
    u64 count | u32 crc32(offsets) | b"HPINDEX1"  trailer, 20 bytes
"""

from __future__ import annotations

import functools
import struct
import zlib
from typing import Any, Iterator

import fsspec
import numpy as np

from .core import CorruptRecordError
from .records import RecordShapeError, decode_element, encode_element
from .tar_stream import MAX_MEMBER_BYTES, BlockReader, CappedTarStream, parse_tar

MAGIC = b"HPSHARD1"
INDEX_MAGIC = b"HPINDEX1"
END_OF_RECORDS = 0xFFFFFFFF
TRAILER = struct.Struct("<QI8s")
HEADER = struct.Struct("<II")
BLOCK_SIZE = 4 << 20  # sequential reads in 4 MiB blocks


class ShardWriter:
    """Write records to one shard (through fsspec), atomically on :meth:`close`.

    Example::

        with ShardWriter("memory://data/a.shard") as w:
            w.write((torch.zeros(3), 1))
    """

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.tmp = self.path + ".tmp"
        parent = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.file = self.fs.open(self.tmp, "wb")
        self.file.write(MAGIC)
        self.offsets: list[int] = []
        self.pos = len(MAGIC)

    def write(self, element: Any) -> None:
        """Append one element as a record."""
        self.write_payload(encode_element(element))

    def write_payload(self, payload: bytes) -> None:
        """Append already-encoded record bytes."""
        self.offsets.append(self.pos)
        self.file.write(HEADER.pack(len(payload), zlib.crc32(payload)))
        self.file.write(payload)
        self.pos += HEADER.size + len(payload)

    def close(self) -> str:
        """Write the index, then rename the temporary file into place; returns the URL."""
        index = struct.pack(f"<{len(self.offsets)}Q", *self.offsets)
        self.file.write(struct.pack("<I", END_OF_RECORDS) + index)
        self.file.write(TRAILER.pack(len(self.offsets), zlib.crc32(index), INDEX_MAGIC))
        self.file.close()
        self.fs.mv(self.tmp, self.path)
        return self.url

    def abort(self) -> None:
        """Drop the partial file."""
        self.file.close()
        if self.fs.exists(self.tmp):
            self.fs.rm(self.tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@functools.lru_cache(maxsize=1 << 16)
def resolve(url: str) -> tuple:
    """``(filesystem, path)`` of ``url``, cached: fsspec's URL parsing costs ~0.5 ms of
    Python per call, which matters when dozens of reader threads share the GIL.

    Example::

        fs, path = resolve("memory://d/a.shard")
    """
    return fsspec.core.url_to_fs(url)


def open_url(url: str, block_size: int | None = None):
    """Open ``url`` for reading; a missing file gives a clear FileNotFoundError.

    Example::

        with open_url("memory://d/a.shard") as f:
            magic = f.read(8)
    """
    fs, path = resolve(url)
    try:
        return fs.open(path, "rb", **({"block_size": block_size} if block_size else {}))
    except FileNotFoundError:
        raise FileNotFoundError(f"shard '{url}' does not exist: check data.shards") from None


def read_index(url: str) -> list[int]:
    """Byte offsets of every record of a ``.shard`` file (reads only its tail).

    Example::

        n_records = len(read_index("data/train-00000.shard"))
    """
    return read_bounds(url)[:-1].tolist()


def read_bounds(url: str) -> np.ndarray:
    """The record offsets of a ``.shard`` file and, last, the offset where its records end
    (its end-of-records marker), as one uint64 array: record ``i`` spans
    ``bounds[i]:bounds[i + 1]``, header included. Reads only the file's tail.

    Example::

        bounds = read_bounds("data/train-00000.shard"); int(bounds[1] - bounds[0])
    """
    with open_url(url) as f:
        size = f.seek(0, 2)
        if size < len(MAGIC) + TRAILER.size:
            raise CorruptRecordError(f"shard '{url}' is truncated ({size} bytes): rewrite it "
                                     "with 'hpmodel data write'")
        f.seek(size - TRAILER.size)
        count, crc, magic = TRAILER.unpack(f.read(TRAILER.size))
        start = size - TRAILER.size - 8 * count
        if magic != INDEX_MAGIC or start < len(MAGIC) + 4:
            raise CorruptRecordError(f"shard '{url}' has no valid index at byte offset "
                                     f"{size - TRAILER.size}: rewrite it with 'hpmodel data write'")
        f.seek(start)
        raw = f.read(8 * count)
    if zlib.crc32(raw) != crc:
        raise CorruptRecordError(f"index of shard '{url}' at byte offset {start} fails its "
                                 "checksum: rewrite the shard with 'hpmodel data write'")
    bounds = np.empty(count + 1, dtype=np.uint64)
    bounds[:-1] = np.frombuffer(raw, dtype="<u8")
    bounds[-1] = start - 4  # the u32 end-of-records marker sits right before the index
    return bounds


def count_records(url: str) -> int | None:
    """Records in a shard from its index; None for formats without one (.tar).

    Example::

        count_records("data/train-00000.shard")  # e.g. 10000
    """
    return None if is_tar(url) else len(read_index(url))


def is_tar(url: str) -> bool:
    """Whether ``url`` names a WebDataset tar shard.

    Example::

        is_tar("train-000001.tar")  # True
    """
    return url.endswith((".tar", ".tar.gz", ".tgz"))


def fetch_blocks(url: str, start: int = 0) -> Iterator[bytes]:
    """Raw bytes of a shard in ``BLOCK_SIZE`` blocks, from record ``start`` (the I/O half).

    This is what interleave runs in its reader threads: it holds the GIL only briefly,
    so dozens of files can wait on their time-to-first-byte at once while parsing
    (:func:`parse_blocks`) stays in the consumer thread.

    Example::

        records = list(parse_blocks(fetch_blocks(url), url))
    """
    offset = 0
    if start and not is_tar(url):
        offsets = read_index(url)
        if start >= len(offsets):
            return
        offset = offsets[start]
    with open_url(url, BLOCK_SIZE) as f:
        if offset:
            f.seek(offset)
        yield offset.to_bytes(8, "little")  # first item: where the bytes start
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                return
            yield block


def parse_blocks(blocks: Iterator[bytes], url: str, ignore_errors: bool = False,
                 on_skip=None, start: int = 0,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[Any]:
    """Decoded elements from the output of :func:`fetch_blocks` (the CPU half).

    Example::

        for x, y in parse_blocks(fetch_blocks("memory://d/a.shard"), "memory://d/a.shard"):
            ...
    """
    # A generator, so nothing is read until the first element is asked for: opening
    # readers ahead of time must not wait on their time-to-first-byte.
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:  # fetch_blocks found nothing left to read (resume at the end)
        return
    offset = int.from_bytes(first, "little")
    on_skip = on_skip or (lambda n: None)
    if is_tar(url):
        stream = CappedTarStream(BlockReader(blocks), url, max_member_bytes)
        yield from _drop(parse_tar(stream, url, ignore_errors, on_skip), start)
    else:
        yield from _parse_records(BlockReader(blocks), url, offset, ignore_errors, on_skip)


def read_shard(url: str, start: int = 0, ignore_errors: bool = False,
               on_skip=None, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[Any]:
    """Decoded elements of one shard (``.shard`` or WebDataset ``.tar``), from record ``start``.

    A record failing its checksum raises :class:`CorruptRecordError` naming shard and
    byte offset, or with ``ignore_errors`` is skipped and reported to ``on_skip(n)``.

    Example::

        for x, y in read_shard("memory://data/a.shard"):
            ...
    """
    return parse_blocks(fetch_blocks(url, start), url, ignore_errors, on_skip, start, max_member_bytes)


def _drop(iterator: Iterator, n: int) -> Iterator:
    for i, item in enumerate(iterator):
        if i >= n:
            yield item


def _parse_records(f: BlockReader, url: str, offset: int, ignore_errors: bool,
                   on_skip) -> Iterator[Any]:
    if offset == 0:
        if f.read(len(MAGIC)) != MAGIC:
            raise CorruptRecordError(f"'{url}' is not an hpmodel shard (bad magic at byte "
                                     "offset 0): write shards with 'hpmodel data write'")
        offset = len(MAGIC)
    while True:
        head = f.read(HEADER.size)
        if len(head) >= 4 and struct.unpack_from("<I", head)[0] == END_OF_RECORDS:
            return
        payload = None
        if len(head) == HEADER.size:
            length, crc = HEADER.unpack(head)
            payload = f.read(length)
            if len(payload) < length:
                payload = None
        if payload is None:  # a broken length or a cut-off file: cannot go on
            _fail(url, offset, "the shard is truncated or its record length is corrupt",
                  ignore_errors, on_skip)
            return
        if zlib.crc32(payload) != crc:
            _fail(url, offset, "checksum mismatch", ignore_errors, on_skip)
        else:
            yield _decode(payload, url, offset)
        offset += HEADER.size + length


def _fail(url: str, offset: int, what: str, ignore_errors: bool, on_skip) -> None:
    if not ignore_errors:
        raise CorruptRecordError(f"corrupt record in shard '{url}' at byte offset {offset}: "
                                 f"{what}; rewrite the shard or pass ignore_errors=True to "
                                 "skip bad records")
    on_skip(1)


def _decode(payload: bytes, url: str, offset: int) -> Any:
    try:
        return decode_element(payload)
    except RecordShapeError as err:
        raise CorruptRecordError(f"record in shard '{url}' at byte offset {offset} is malformed "
                                 f"({err}): a damaged or forged shard; rewrite it with "
                                 "'hpmodel data write'") from None
    except (ValueError, IndexError, struct.error, RuntimeError) as err:
        raise CorruptRecordError(f"record in shard '{url}' at byte offset {offset} passes "
                                 f"its checksum but cannot be decoded ({err}): it was "
                                 "written by another tool or version") from None


def read_tar(url: str, ignore_errors: bool = False, on_skip=None,
             max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict]:
    """WebDataset samples of a tar shard: dicts ``{"__key__": key, ext: bytes, ...}``.

    Files sharing a key (the name up to the first dot of its last path part) form one
    sample, e.g. ``000017.jpg`` and ``000017.cls``.

    Example::

        for sample in read_tar("shards/train-000000.tar"):
            image_bytes, label = sample["jpg"], int(sample["cls"])
    """
    return parse_blocks(fetch_blocks(url), url, ignore_errors, on_skip, 0, max_member_bytes)
