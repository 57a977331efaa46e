"""Scoped filters for third-party chatter that tells a user nothing.

The standard library does the work: ``warnings.catch_warnings`` with ``filterwarnings``
for a message regex, and a ``logging.Filter`` added to the one logger that emits a
message (a logger's own filters see only the records created on it, so nothing else is
touched); both are undone when the block ends. Nothing here is process-wide: a warning
that is not on a list still reaches the user, inside the block too.

What is silenced, and why it says nothing to a user:

- torchao's import, on a machine without its CUDA builds: "Failed to load …_C_mxfp8…"
  and "…_C_cutlass_90a…" (kernels for other GPUs), "Detected no triton" (CPU-only), and
  torch's pytree notice that torchao registers Enum types the old way;
- ONNX Runtime's C++ log at WARNING (e.g. the quantizer's calibration graph "Removing
  initializer … It is not used by any node"), which has no logger to filter;
- DCP's "torch.distributed is disabled … assuming the intent is to save in a single
  process", which a single-process backup means on purpose.

Example::

    with quiet_imports():
        from torchao.quantization import quantize_   # no "Failed to load … _C_mxfp8"

    with quieted(logs=[LogNoise("torchao", r"Failed to load")]):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class LogNoise:
    """Records of ``logger`` whose formatted message matches ``pattern`` (``re.search``)."""

    logger: str
    pattern: str


@dataclass(frozen=True)
class WarningNoise:
    """``warnings.warn`` messages matching ``pattern`` from the start (as ``filterwarnings``)."""

    pattern: str
    category: type[Warning] = Warning


TORCHAO_IMPORT = (
    LogNoise("torchao", r"Failed to load .*_C_(mxfp8|cutlass_90a)"),
    LogNoise("torchao.kernel.intmm", r"Detected no triton"),
    LogNoise("torch.utils._pytree", r"is an Enum subclass and is now natively supported"),
)
DCP_SINGLE_PROCESS = WarningNoise(
    r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming the intent is "
    r"to (save|load) in a single process", UserWarning)
# ORT's int4 quantizer: an INFO line per node, and a WARNING that it raises the opset to 21
# for int4 Gather tables (which ONNX Runtime runs): all of that logger's records.
ORT_INT4_QUANTIZER = LogNoise("onnxruntime.quantization.matmul_nbits_quantizer", r"")
ORT_ERROR, ORT_WARNING = 3, 2  # onnxruntime's severities; WARNING is its default


class DropMatching(logging.Filter):
    """Drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: Iterable[str]):
        super().__init__()
        self.regexes = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(regex.search(message) for regex in self.regexes)


@contextlib.contextmanager
def quieted(logs: Iterable[LogNoise] = (), warns: Iterable[WarningNoise] = ()) -> Iterator[None]:
    """While the block runs, drop exactly these log records and warnings.

    Example::

        with quieted(warns=[DCP_SINGLE_PROCESS]):
            dcp.save(tensors, storage_writer=writer, no_dist=True)
    """
    by_logger: dict[str, list[str]] = {}
    for noise in logs:
        by_logger.setdefault(noise.logger, []).append(noise.pattern)
    added = [(logging.getLogger(name), DropMatching(patterns)) for name, patterns in by_logger.items()]
    with warnings.catch_warnings():
        for noise in warns:
            warnings.filterwarnings("ignore", message=noise.pattern, category=noise.category)
        for logger, drop in added:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger, drop in added:
                logger.removeFilter(drop)


def quiet_imports() -> contextlib.AbstractContextManager[None]:
    """Around ``import torchao…``: its messages about kernels this machine cannot use.

    Example::

        with quiet_imports():
            from torchao.quantization.qat import QATConfig
    """
    return quieted(logs=TORCHAO_IMPORT)


def quiet_single_process_dcp() -> contextlib.AbstractContextManager[None]:
    """Around ``dcp.save`` / ``dcp.load`` in one process, where "no process group" is meant.

    Example::

        with quiet_single_process_dcp():
            dcp.save(tensors, storage_writer=writer)
    """
    return quieted(warns=[DCP_SINGLE_PROCESS])


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's C++ log raised to ERROR while the block runs (then back to WARNING,
    its default: ORT has no getter for the level), for sessions hpmodel does not create
    itself, such as the static quantizer's calibration session.

    Example::

        with quiet_onnxruntime():
            quantize_static(source, target, reader)
    """
    try:
        import onnxruntime
    except ImportError:  # the compress extra is optional; nothing to quiet without it
        yield
        return
    onnxruntime.set_default_logger_severity(ORT_ERROR)
    try:
        yield
    finally:
        onnxruntime.set_default_logger_severity(ORT_WARNING)


@contextlib.contextmanager
def quiet_compress() -> Iterator[None]:
    """Everything above that building a compressed variant can emit (torchao, ORT, DCP).

    Example::

        with quiet_compress():
            folder = variants.build_variant(source, "qat", out_dir, options)
    """
    with quieted(logs=TORCHAO_IMPORT, warns=[DCP_SINGLE_PROCESS]), quiet_onnxruntime():
        yield


__all__ = ["LogNoise", "WarningNoise", "quieted", "quiet_imports", "quiet_single_process_dcp",
           "quiet_onnxruntime", "quiet_compress"]
