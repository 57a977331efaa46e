"""Random access to the records of ``.shard`` files, by global record number.

Each shard's index (its tail: one byte offset per record) is read once; a record is
then one ranged read of its header and payload (its length is the gap to the next
offset), checked against its CRC and decoded. Memory holds only the offsets (a uint64
array: 8 bytes a record), never the data, so a map-style
pipeline over shards far larger than RAM is as cheap to shuffle and to resume as one
over tensors: a seeded permutation of record numbers, and skipping is free. File
handles are opened lazily through ``fsspec`` and kept per thread.

Example::

    table = RecordTable(list_shards("data/train-*.shard"))
    len(table), table[0]      # number of records, the first record
"""

from __future__ import annotations

import bisect
import threading
import zlib
from typing import Any

from .core import CorruptRecordError
from .shards import HEADER, _decode, open_url, read_bounds


class RecordTable:
    """Records of ``urls`` (in order) addressable as ``table[i]``; picklable.

    Example::

        table = RecordTable(["a.shard", "b.shard"])
        table[len(table) - 1]  # the last record of b.shard
    """

    def __init__(self, urls: list[str]):
        self.urls = list(urls)
        self.bounds = [read_bounds(url) for url in self.urls]  # offsets, then the end
        self.starts = [0]
        for bounds in self.bounds:
            self.starts.append(self.starts[-1] + len(bounds) - 1)
        self._local = threading.local()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} is outside [0, {len(self)})")
        shard = bisect.bisect_right(self.starts, i) - 1
        j = i - self.starts[shard]
        url, bounds = self.urls[shard], self.bounds[shard]
        offset, size = int(bounds[j]), int(bounds[j + 1]) - int(bounds[j])
        raw = b""
        if size >= HEADER.size:  # a forged index could say less (or go backwards)
            handle = self._handle(shard)
            handle.seek(offset)
            raw = handle.read(size)
        length, crc = HEADER.unpack_from(raw) if len(raw) == size >= HEADER.size else (-1, 0)
        payload = memoryview(raw)[HEADER.size:]
        if length != size - HEADER.size or zlib.crc32(payload) != crc:
            raise CorruptRecordError(f"corrupt record in shard '{url}' at byte offset {offset}: "
                                     "checksum mismatch or cut-off record; rewrite the shard "
                                     "with 'hpmodel data write'")
        return _decode(bytearray(payload), url, offset)  # writable: tensors share it

    def _handle(self, shard: int):
        handles = self._local.__dict__.setdefault("handles", {})
        if shard not in handles:
            handles[shard] = open_url(self.urls[shard])
        return handles[shard]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_local")  # open files stay in their process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class Subset:
    """``table[indices[i]]`` for ``i`` in ``range(len(indices))``, with a converter applied.

    Example::

        train = Subset(table, [0, 2, 5], convert=lambda r: r)
        train[1]  # table[2]
    """

    def __init__(self, table: RecordTable, indices, convert=None):
        self.table, self.indices, self.convert = table, list(map(int, indices)), convert

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        record = self.table[self.indices[i]]
        return self.convert(record) if self.convert is not None else record
