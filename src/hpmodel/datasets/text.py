"""A real text corpus that exists offline on every machine, and the baseline a LM must beat.

The corpus is the Python standard library's own source files (``sysconfig`` finds them;
``site-packages`` is left out), sorted by path so every machine with the same Python
takes the same files. The baseline is ``gzip -9`` (the standard library's ``gzip``): its
bits per byte on held-out text are what a byte-level language model has to go below to
have learned anything beyond repetition.

Example::

    files = stdlib_corpus(max_bytes=4_000_000)
    gzip_bits_per_byte(b"".join(open(f, "rb").read() for f in files))   # about 2.1 bits
"""

from __future__ import annotations

import gzip
import os
import sysconfig
from pathlib import Path

from hpmodel.kernel.errors import HpmodelError

_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_corpus(max_bytes: int = 0, root: str | os.PathLike | None = None) -> list[str]:
    """Paths of the standard library's ``*.py`` files, sorted, up to ``max_bytes`` in total
    (0: all of them). ``root`` defaults to ``sysconfig.get_paths()["stdlib"]``.

    Example::

        stdlib_corpus(max_bytes=1_000_000)   # ['/usr/lib/python3.11/__future__.py', ...]
    """
    if max_bytes < 0:
        raise HpmodelError(f"max_bytes = {max_bytes} must be 0 (no cap) or more")
    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise HpmodelError(f"the standard library directory {base} does not exist: pass root= "
                           "the folder of a Python installation's *.py files")
    files = sorted(str(p) for p in base.rglob("*.py")
                   if not _SKIPPED_DIRS & set(p.relative_to(base).parts) and p.is_file())
    if not max_bytes:
        return files
    chosen, total = [], 0
    for path in files:
        size = os.path.getsize(path)
        if size == 0:
            continue
        if total + size > max_bytes and chosen:
            break
        chosen.append(path)
        total += size
    return chosen


def gzip_bits_per_byte(text_bytes: bytes) -> float:
    """Bits per byte of ``gzip -9`` on ``text_bytes``: 8 · len(compressed) / len(text).

    Example::

        gzip_bits_per_byte(b"abc" * 1000)   # far below 8: repetition compresses
    """
    if not text_bytes:
        raise HpmodelError("gzip_bits_per_byte needs at least one byte of text")
    return 8 * len(gzip.compress(bytes(text_bytes), compresslevel=9, mtime=0)) / len(text_bytes)
