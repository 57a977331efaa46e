"""Caches: the first complete epoch kept in memory, or saved as one shard for later runs.

The memory cache is a Python list. The file cache is built on the shard format
(``shards.py``, through ``fsspec``): the file is written to a
temporary name and renamed only when an epoch completes, so a crash never leaves a
half cache behind; a later run (or epoch) finding the file reads it instead of the
upstream stages, and resumes by seeking through the shard index.
"""

from __future__ import annotations

from typing import Iterator

import fsspec

from .core import Context, Node
from .shards import ShardWriter, count_records, read_shard


class FileCacheNode(Node):
    """Replay elements from ``path`` if it exists, else pass through and write it.

    Example::

        pipe = from_tensors(x).map(decode).cache("/tmp/decoded.cache")
    """

    kind = "cache"
    one_to_one = True

    def __init__(self, upstream: Node, path: str):
        super().__init__(upstream)
        self.path = path

    def for_shard(self, spec: tuple) -> None:
        """Use a file per rank when a shard sits below this cache."""
        num, index, block = spec
        self.path = f"{self.path}.rank{index}-of-{num}" + (f"-block{block}" if block else "")

    def _exists(self) -> bool:
        fs, path = fsspec.core.url_to_fs(self.path)
        return fs.exists(path)

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self._exists():
            self.stage(ctx).extra["source"] = "file"
            return read_shard(self.path, skip, on_skip=ctx.stats.count_skipped)
        return self._fill(ctx, skip)

    def _fill(self, ctx: Context, skip: int) -> Iterator:
        writer = ShardWriter(self.path) if skip == 0 else None  # partial passes don't write
        done = False
        try:
            for item in self.upstream.iterate(ctx, skip):
                if writer is not None:
                    writer.write(item)
                yield item
            done = True
        finally:
            if writer is not None:
                writer.close() if done else writer.abort()

    def warm_ready(self) -> bool:
        return self._exists()  # while the file is written, a second pass would write it too

    def cardinality(self) -> int:
        if self._exists():
            return count_records(self.path)
        return self.upstream.cardinality()


class MemoryCacheNode(Node):
    """Elements of the first complete pass kept in memory and replayed afterwards.

    Example::

        from_tensors(x).map(decode).cache()
    """

    kind = "cache"
    one_to_one = True

    def __init__(self, upstream: Node):
        super().__init__(upstream)
        self.store: list | None = None

    def clone(self, upstream: Node | None) -> Node:
        new = super().clone(upstream)
        new.store = None
        return new

    def iterate(self, ctx: Context, skip: int = 0) -> Iterator:
        if self.store is not None:
            return iter(self.store[skip:])
        return self._fill(ctx, skip)

    def _fill(self, ctx: Context, skip: int) -> Iterator:
        items = [] if skip == 0 else None  # a partial pass cannot fill the cache
        for item in self.upstream.iterate(ctx, skip):
            if items is not None:
                items.append(item)
            yield item
        if items is not None:
            self.store = items

    def warm_ready(self) -> bool:
        return self.store is not None

    def cardinality(self) -> int:
        return len(self.store) if self.store is not None else self.upstream.cardinality()
