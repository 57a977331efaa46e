"""The tf.data side of ``hpmodel bench input``: the same cases, written as a tf.data user would.

Standalone on purpose (stdlib + numpy; ``tensorflow`` imported lazily): it runs either
in-process, or as a plain script (``TF_PYTHON path/to/_input_tf.py``, not ``-m``) in a
separate interpreter whose venv has tensorflow-cpu (the project's venv never gets
tensorflow).
In that mode it is a JSON-lines server: one request per line on stdin (``{"case": ...,
**params}``), one reply per line on stdout (``{"rate": elements_per_second}``), so the
bench can alternate tf.data with hpmodel and DataLoader repeat by repeat.

Example::

    python src/hpmodel/bench/_input_tf.py <<< '{"case": "python_map", "n": 256, "loops": 1000}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

clock = time.perf_counter
BATCH = 32


def spin(n: int) -> int:
    """The pure-Python busy loop of the map case (the same as the hpmodel side's)."""
    s = 0
    for i in range(n):
        s += i & 7
    return s


def numpy_work(x: np.ndarray, size: int) -> np.ndarray:
    """The GIL-releasing map: ufuncs over ``size`` float32s derived from ``x`` (~1 ms)."""
    a = np.resize(x, size)
    for _ in range(4):
        a = np.sqrt(np.abs(np.sin(a) * 1.5 + 0.25))
    return x + np.float32(a[:1].sum())


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # optional extra: only the tf.data contender needs it

    return tf


def _rate(ds, n: int, epochs: int = 1) -> float:
    t0 = clock()
    seen = 0
    for _ in range(epochs):  # a new iterator per epoch, as a training loop makes
        for _, yb in ds:
            seen += int(yb.shape[0])
    if seen != n * epochs:
        raise RuntimeError(f"tf.data produced {seen} elements, expected {n * epochs}")
    return seen / (clock() - t0)


def _tensors(n: int, width: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, width), dtype=np.float32), np.arange(n, dtype=np.int64)


def _mapped_rate(n: int, fn, epochs: int) -> float:
    """tf.numpy_function around ``fn(x, y)`` per element, num_parallel_calls=AUTOTUNE."""
    tf = _tf()
    x, y = _tensors(n, 64)
    ds = (tf.data.Dataset.from_tensor_slices((x, y))
          .map(lambda a, b: tf.numpy_function(fn, [a, b], (tf.float32, tf.int64)),
               num_parallel_calls=tf.data.AUTOTUNE)
          .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    return _rate(ds, n, epochs)


def case_python_map(n: int, loops: int, epochs: int = 1) -> float:
    """tf.numpy_function around the Python loop, num_parallel_calls=AUTOTUNE."""

    def fn(xe, ye):
        spin(loops)
        return xe * np.float32(2.0), ye

    return _mapped_rate(n, fn, epochs)


def case_numpy_map(n: int, size: int, epochs: int = 1) -> float:
    """tf.numpy_function around GIL-releasing numpy ufuncs, AUTOTUNE."""

    def fn(xe, ye):
        return numpy_work(xe, size), ye

    return _mapped_rate(n, fn, epochs)


_FILES: dict = {}


def _record_files(files: int, per_file: int, width: int) -> list[str]:
    """TFRecord files of raw float32[width] + int64 label records (tf.data's own format)."""
    key = (files, per_file, width)
    if key in _FILES:
        return _FILES[key]
    tf = _tf()
    root = tempfile.mkdtemp(prefix="hpmodel-bench-tf-")
    x, y = _tensors(files * per_file, width)
    paths = []
    for f in range(files):
        path = os.path.join(root, f"part-{f:04d}.tfrecord")
        with tf.io.TFRecordWriter(path) as w:
            for i in range(f * per_file, (f + 1) * per_file):
                w.write(x[i].tobytes() + y[i].tobytes())
        paths.append(path)
    _FILES[key] = paths
    return paths


def case_interleave(files: int, per_file: int, width: int, ttfb: float) -> float:
    """interleave(TFRecordDataset, cycle_length=4, AUTOTUNE); ``ttfb`` sleeps on each open."""
    tf = _tf()
    paths = _record_files(files, per_file, width)

    def open_file(path):
        if ttfb > 0:  # time to first byte of a remote object, before its records flow
            path = tf.numpy_function(lambda p: (time.sleep(ttfb), p)[1], [path], tf.string)
        return tf.data.TFRecordDataset(path)

    def parse(record):
        raw = tf.io.decode_raw(record, tf.uint8)
        x = tf.bitcast(tf.reshape(raw[:4 * width], (width, 4)), tf.float32)
        y = tf.bitcast(tf.reshape(raw[4 * width:], (8,)), tf.int64)
        return x, y

    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .interleave(open_file, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE)
          .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    return _rate(ds, files * per_file)


def case_cache_shuffle(n: int, width: int, buffer: int) -> float:
    """cache() -> shuffle(buffer, seed) -> batch: the rate of the second epoch."""
    tf = _tf()
    x, y = _tensors(n, width)
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).cache()
          .shuffle(buffer, seed=0).batch(BATCH).prefetch(tf.data.AUTOTUNE))
    _rate(ds, n)  # first epoch fills the cache
    return _rate(ds, n)


CASES = {"python_map": case_python_map, "numpy_map": case_numpy_map,
         "interleave": case_interleave, "cache_shuffle": case_cache_shuffle}


def run_case(request: dict) -> dict:
    """One request ``{"case": name, **params}`` -> ``{"rate": ...}`` or ``{"error": ...}``.

    Example::

        run_case({"case": "cache_shuffle", "n": 1024, "width": 16, "buffer": 512})
    """
    params = dict(request)
    name = params.pop("case")
    try:
        return {"rate": CASES[name](**params)}
    except Exception as error:  # noqa: BLE001 - reported to the bench as one line
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0]}


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """The JSON-lines loop of the subprocess mode; answers ``{"ready": version}`` first."""
    try:
        version = _tf().__version__
    except ImportError as error:
        version = None
        print(json.dumps({"error": f"tensorflow is not importable here: {error}"}), file=stdout)
        stdout.flush()
        return
    print(json.dumps({"ready": version}), file=stdout, flush=True)
    for line in stdin:
        if line.strip():
            print(json.dumps(run_case(json.loads(line))), file=stdout, flush=True)


class TFContender:
    """tf.data as a bench contender: in-process, or a ``tf_python`` subprocess server.

    ``available`` is False (and ``note`` says why) when tensorflow cannot be used.

    Example::

        tf = TFContender("/work/tfvenv/bin/python"); tf.rate("numpy_map", n=256, size=4096)
    """

    def __init__(self, tf_python: str | None = None):
        self.proc, self.version, self.note = None, None, None
        if tf_python:
            self._start(tf_python)
            return
        try:
            self.version = _tf().__version__
        except ImportError:
            self.note = ("tf.data skipped: tensorflow is not importable (pip install "
                         "tensorflow-cpu in another venv and pass --set tf_python=PATH)")

    def _start(self, tf_python: str) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
        try:
            self.proc = subprocess.Popen([tf_python, os.path.abspath(__file__)], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        except OSError as error:
            self.note = f"tf.data skipped: cannot start {tf_python}: {error}"
            return
        first = json.loads(self.proc.stdout.readline() or '{"error": "no answer"}')
        if "ready" in first:
            self.version = first["ready"]
        else:
            self.note = f"tf.data skipped: {tf_python}: {first.get('error')}"
            self.close()

    @property
    def available(self) -> bool:
        """Whether tf.data can run here."""
        return self.version is not None

    def rate(self, case: str, **params) -> float:
        """Elements per second of one full epoch of ``case`` on tf.data."""
        request = {"case": case, **params}
        if self.proc is None:
            reply = run_case(request)
        else:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = json.loads(self.proc.stdout.readline() or '{"error": "tf side died"}')
        if "error" in reply:
            raise RuntimeError(f"tf.data case {case}: {reply['error']}")
        return reply["rate"]

    def close(self) -> None:
        """Stop the subprocess, if any."""
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


if __name__ == "__main__":
    serve()
