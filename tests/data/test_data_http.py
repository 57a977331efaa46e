"""Remote reading over real HTTP on 127.0.0.1, through an fsspec filesystem.

fsspec's own HTTP filesystem needs aiohttp (absent here), so this test registers a
minimal fsspec filesystem (range requests with urllib) for a ``localhttp://`` protocol
and serves the shards with ``http.server`` in a thread. It checks what matters for
object stores: index and resume via ranged reads, sequential reading in large blocks.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

import hpmodel.data as hd

REQUESTS: list[str] = []


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (SimpleHTTPRequestHandler ignores Range)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = _read(path)
        start, end = 0, len(data) - 1
        header = self.headers.get("Range")
        if header:
            first, last = header.split("=")[1].split("-")
            start, end = int(first), min(int(last), len(data) - 1)
        REQUESTS.append(f"GET {self.path} {start}-{end}")
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])

    def log_message(self, *args):
        pass


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _HTTPFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        request = urllib.request.Request(self.fs.url(self.path),
                                         headers={"Range": f"bytes={start}-{end - 1}"})
        with urllib.request.urlopen(request) as response:
            return response.read()


class LocalHTTPFileSystem(AbstractFileSystem):
    """``localhttp://127.0.0.1:PORT/path``: ranged GETs against a local server."""

    protocol = "localhttp"

    def url(self, path: str) -> str:
        return "http://" + self._strip_protocol(path)

    def info(self, path, **kwargs):
        request = urllib.request.Request(self.url(path), method="HEAD")
        try:
            with urllib.request.urlopen(request) as response:
                size = int(response.headers["Content-Length"])
        except urllib.error.HTTPError:
            raise FileNotFoundError(path) from None
        return {"name": path, "size": size, "type": "file"}

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return _HTTPFile(self, path, mode, block_size=block_size or 2**20,
                         size=self.info(path)["size"], cache_type="none")


@pytest.fixture
def server(tmp_path):
    fsspec.register_implementation("localhttp", LocalHTTPFileSystem, clobber=True)
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"localhttp://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_shards_over_http_read_sequentially_and_resume_by_range(server):
    root, base = server
    names = [os.path.basename(p) for p in hd.write_shards(
        (np.arange(300).reshape(100, 3), np.arange(100)), str(root), records_per_shard=25)]
    urls = [f"{base}/{n}" for n in names]
    REQUESTS.clear()
    pipe = hd.from_shards(urls).interleave(cycle_length=2, num_parallel_calls=2)
    labels = [int(y) for _, y in pipe]
    assert sorted(labels) == list(range(100))
    assert len(REQUESTS) == len(urls)  # one ranged GET per small shard: sequential blocks
    it = iter(pipe)
    head = [int(next(it)[1]) for _ in range(37)]
    state = pipe.state_dict()
    it.close()
    resumed = hd.from_shards(urls).interleave(cycle_length=2, num_parallel_calls=2)
    resumed.load_state_dict(state)
    REQUESTS.clear()
    assert head + [int(y) for _, y in resumed] == labels
    assert any(not r.endswith(f"0-{r.split('-')[-1]}") for r in REQUESTS)  # seeks by range
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(hd.from_shards([f"{base}/missing.shard"]))
