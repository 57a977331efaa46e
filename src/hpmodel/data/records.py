"""Encoding of one element as the bytes of one shard record (no pickle).

Plain ``struct`` framing around raw tensor bytes: decoding is ``torch.frombuffer`` on
the record's buffer, so it is fast and never executes code from the file. Supported
values: tensors and numpy arrays (decoded as tensors), ``bytes``, ``str``, ``int``,
``float``, ``bool``, ``None``, and tuples / lists / dicts (string keys) of those.

Example::

    payload = encode_element((torch.zeros(3), 7))
    x, y = decode_element(payload)
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
           torch.complex128]
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}
_NUMPY = {d: np.dtype(str(d).replace("torch.", "")) for d in _DTYPES
          if d not in (torch.bfloat16,)}
_ITEMSIZE = [d.itemsize for d in _DTYPES]
# One-byte tags of the value kinds.
TENSOR, BYTES, STR, INT, FLOAT, NONE, TUPLE, LIST, DICT, BOOL = range(10)


def encode_element(value: Any) -> bytes:
    """The record bytes of ``value``.

    Example::

        encode_element({"x": torch.ones(2), "label": 3})
    """
    parts: list[bytes] = []
    _encode(value, parts)
    return b"".join(parts)


def _encode(value: Any, out: list) -> None:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        if t.dtype not in _DTYPE_CODE:
            raise ValueError(f"cannot store tensors of dtype {t.dtype} in a shard: "
                             "convert them first, e.g. to torch.float32")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out.append(struct.pack("<BBB", TENSOR, _DTYPE_CODE[t.dtype], t.dim()))
        out.append(struct.pack(f"<{t.dim()}q", *t.shape))
        out.append(struct.pack("<Q", len(raw)))
        out.append(raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(struct.pack("<BQ", BYTES, len(value)))
        out.append(bytes(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(struct.pack("<BQ", STR, len(raw)))
        out.append(raw)
    elif isinstance(value, (bool, np.bool_)):
        out.append(struct.pack("<BB", BOOL, bool(value)))
    elif isinstance(value, (int, np.integer)):
        out.append(struct.pack("<Bq", INT, int(value)))
    elif isinstance(value, (float, np.floating)):
        out.append(struct.pack("<Bd", FLOAT, float(value)))
    elif value is None:
        out.append(struct.pack("<B", NONE))
    elif isinstance(value, (tuple, list)):
        out.append(struct.pack("<BI", TUPLE if isinstance(value, tuple) else LIST, len(value)))
        for v in value:
            _encode(v, out)
    elif isinstance(value, dict):
        out.append(struct.pack("<BI", DICT, len(value)))
        for k, v in value.items():
            _encode(str(k), out)
            _encode(v, out)
    else:
        raise ValueError(f"cannot store a {type(value).__name__} in a shard: use tensors, "
                         "arrays, bytes, str, numbers, or tuples/lists/dicts of them")


class RecordShapeError(ValueError):
    """A tensor's stored bytes do not match its shape and dtype (damaged or forged record)."""


def decode_element(payload: bytes | bytearray) -> Any:
    """The value encoded in ``payload`` (tensors share one copy of the buffer).

    Example::

        decode_element(encode_element((1, "a")))  # (1, 'a')
    """
    buf = bytearray(payload) if isinstance(payload, bytes) else payload
    value, end = _decode(buf, 0)
    if end != len(buf):
        raise ValueError(f"{len(buf) - end} trailing bytes after the encoded element")
    return value


def check_tensor(code: int, shape: tuple, nbytes: int, available: int) -> torch.dtype:
    """The dtype of a stored tensor whose header is consistent; RecordShapeError otherwise.

    Example::

        check_tensor(0, (2, 3), 24, 24)   # torch.float32
    """
    if code >= len(_DTYPES):
        raise RecordShapeError(f"unknown tensor dtype code {code}")
    if any(size < 0 for size in shape):
        raise RecordShapeError(f"tensor shape {tuple(shape)} has a negative size")
    expected = _ITEMSIZE[code]
    for size in shape:
        expected *= size
    if nbytes != expected:
        raise RecordShapeError(f"tensor of shape {tuple(shape)} and dtype {_DTYPES[code]} needs "
                               f"{expected} bytes, the record says {nbytes}")
    if nbytes > available:
        raise RecordShapeError(f"tensor needs {nbytes} bytes, only {available} remain in the record")
    return _DTYPES[code]


def _decode(buf: bytearray, pos: int) -> tuple[Any, int]:
    tag = buf[pos]
    pos += 1
    if tag == TENSOR:
        code, ndim = buf[pos], buf[pos + 1]
        shape = struct.unpack_from(f"<{ndim}q", buf, pos + 2)
        pos += 2 + 8 * ndim
        (nbytes,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        dtype = check_tensor(code, shape, nbytes, len(buf) - pos)
        if nbytes == 0:  # checked: the shape holds no element
            return torch.empty(shape, dtype=dtype), pos
        np_dtype = _NUMPY.get(dtype)
        if np_dtype is not None:  # numpy views are ~5x cheaper to make than torch's
            array = np.frombuffer(buf, dtype=np_dtype, count=nbytes // np_dtype.itemsize,
                                  offset=pos)
            return torch.from_numpy(array.reshape(shape)), pos + nbytes
        flat = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=pos)
        return flat.view(dtype).reshape(shape), pos + nbytes
    if tag in (BYTES, STR):
        (n,) = struct.unpack_from("<Q", buf, pos)
        if n > len(buf) - pos - 8:
            raise RecordShapeError(f"a {n}-byte string or bytes value, only {len(buf) - pos - 8} remain")
        raw = bytes(buf[pos + 8:pos + 8 + n])
        return (raw if tag == BYTES else raw.decode("utf-8")), pos + 8 + n
    if tag == INT:
        return struct.unpack_from("<q", buf, pos)[0], pos + 8
    if tag == FLOAT:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if tag == BOOL:
        return bool(buf[pos]), pos + 1
    if tag == NONE:
        return None, pos
    if tag in (TUPLE, LIST, DICT):
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        items = []
        for _ in range(n * (2 if tag == DICT else 1)):
            item, pos = _decode(buf, pos)
            items.append(item)
        if tag == DICT:
            return dict(zip(items[::2], items[1::2])), pos
        return (tuple(items) if tag == TUPLE else items), pos
    raise ValueError(f"unknown value tag {tag}")
