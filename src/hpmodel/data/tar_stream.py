"""WebDataset ``.tar`` / ``.tar.gz`` shards read in bounded memory.

The standard library's ``tarfile`` parses the stream (mode ``r|``); ``zlib`` gunzips it,
driven here in bounded steps (``decompressobj(...).decompress(data, max_length)``) under
a size cap: no member, header or sample may decompress to more than
``max_member_bytes`` (1 GiB unless told), so a 512 KB ``.tar.gz`` that would inflate to
gigabytes is refused with one line naming the shard and the member, after at most the
cap has been read.

Example::

    stream = CappedTarStream(reader, "train-0.tar.gz", limit=1 << 30)
    for sample in parse_tar(stream, "train-0.tar.gz", ignore_errors=False, on_skip=None):
        ...
"""

from __future__ import annotations

import tarfile
import zlib
from typing import Iterator

from .core import CorruptRecordError

MAX_MEMBER_BYTES = 1 << 30  # largest decompressed tar member (or sample) read into memory
HEADER_SLACK = 1 << 20  # tar headers around a member, counted with it
CHUNK = 4 << 20  # decompressed bytes produced per step (and compressed bytes read per step)
FEED = 64 << 10  # compressed bytes handed to zlib per call
GZIP_MAGIC = b"\x1f\x8b"


class TarMemberTooLargeError(CorruptRecordError):
    """A tar member (or its headers) decompresses to more than the cap; names shard and member."""


class BlockReader:
    """A minimal read-only file over an iterator of byte blocks (for the parsers).

    Example::

        BlockReader(iter([b"ab", b"cd"])).read(3)  # b'abc'
    """

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks, self.buf, self.pos = blocks, b"", 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all remaining when n < 0); fewer only at the end."""
        out = []
        while n != 0:
            if self.pos >= len(self.buf):
                self.buf, self.pos = next(self.blocks, b""), 0
                if not self.buf:
                    break
            chunk = self.buf[self.pos:] if n < 0 else self.buf[self.pos:self.pos + n]
            self.pos += len(chunk)
            out.append(chunk)
            if n > 0:
                n -= len(chunk)
        return out[0] if len(out) == 1 else b"".join(out)


class CappedTarStream:
    """The (gunzipped) bytes of a tar shard for ``tarfile``'s stream mode, at most
    ``limit`` bytes per member: decompression runs here in bounded steps
    (``zlib.decompressobj(...).decompress(data, max_length)``), so a bomb is refused
    after ``limit`` bytes, never held whole.

    Example::

        stream = CappedTarStream(BlockReader(iter([tar_gz_bytes])), "a.tar.gz", 1 << 20)
        tarfile.open(fileobj=stream, mode="r|")
    """

    def __init__(self, raw: BlockReader, url: str, limit: int):
        self.raw, self.url, self.limit = raw, url, limit
        self.input, self.pos = raw.read(2), 0  # pos: the gzip path's read offset into input
        self.gzip = self.input == GZIP_MAGIC
        self.decompressor = zlib.decompressobj(31) if self.gzip else None
        self.counted, self.member = 0, "the first member"

    def next_member(self, name: str) -> None:
        """The bytes of member ``name`` were consumed: start counting the next one."""
        self.counted, self.member = 0, f"the member after '{name}'"

    def refuse(self, name: str, size: int) -> None:
        raise TarMemberTooLargeError(
            f"tar shard '{self.url}': member '{name}' decompresses to {size} bytes, more than "
            f"the {self.limit}-byte cap (max_member_bytes): a damaged or malicious shard; rewrite "
            "it, or raise max_member_bytes if members this large are meant")

    def read(self, n: int = -1) -> bytes:
        n = self.limit + HEADER_SLACK + 1 if n < 0 else n
        parts, got = [], 0
        while got < n:
            piece = self._produce(min(n - got, CHUNK))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
            self.counted += len(piece)
            if self.counted > self.limit + HEADER_SLACK:
                self.refuse(self.member, self.counted)
        return b"".join(parts)

    def _produce(self, want: int) -> bytes:
        if not self.gzip:
            data, self.input = (self.input[:want], self.input[want:]) if self.input else (self.raw.read(want), b"")
            return data
        while True:
            if self.pos >= len(self.input):
                self.input, self.pos = self.raw.read(CHUNK), 0
                if not self.input:  # end of file: a cut-off stream shows as a short tar
                    return b""
            if self.decompressor.eof:  # concatenated gzip members (as gzip allows)
                self.input, self.pos = self.input[self.pos:].lstrip(b"\0"), 0
                if not self.input:
                    continue
                self.decompressor = zlib.decompressobj(31)
            # A bounded slice: zlib copies what it leaves unconsumed, so handing it the
            # whole 4 MiB input per 10 KiB of output made reading quadratic.
            feed = memoryview(self.input)[self.pos:self.pos + FEED]
            out = self.decompressor.decompress(feed, want)
            left = (self.decompressor.unused_data if self.decompressor.eof
                    else self.decompressor.unconsumed_tail)
            self.pos += len(feed) - len(left)
            if out:
                return out


def parse_tar(f: CappedTarStream, url: str, ignore_errors: bool, on_skip) -> Iterator[dict]:
    sample: dict = {}
    sample_bytes, offset = 0, 0
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                offset = member.offset
                if member.size > f.limit:  # refused before a byte of it is read
                    f.refuse(member.name, member.size)
                if not member.isfile():
                    f.next_member(member.name)
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if sample and sample["__key__"] != key:
                    yield sample
                    sample, sample_bytes = {}, 0
                sample_bytes += member.size
                if sample_bytes > f.limit:  # many members of one key add up too
                    f.refuse(f"{key} (all its members)", sample_bytes)
                sample["__key__"] = key
                sample[ext] = tar.extractfile(member).read()
                f.next_member(member.name)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        if not ignore_errors:
            raise CorruptRecordError(f"corrupt tar shard '{url}' near byte offset {offset} "
                                     f"({err}); rewrite the shard or pass ignore_errors=True "
                                     "to skip the rest of it") from None
        on_skip(1)
        return
    if sample:
        yield sample
