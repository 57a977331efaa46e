"""A malicious file where a shard is expected runs no code: tar members are handed over
as bytes (never unpickled, whatever their extension), and a pickle where a record shard
is expected is refused as corrupt."""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import pytest

from hpmodel.data import from_shards, read_shard, read_tar


class Payload:
    """Unpickling this writes ``marker``: the proof that code ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


def test_pickled_tar_members_come_back_as_bytes_and_run_nothing(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = pickle.dumps(Payload(marker))
    path = tmp_path / "train-0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for ext in ("pyd", "pth", "pickle", "pkl"):  # what WebDataset would unpickle
            info = tarfile.TarInfo(f"000000.{ext}")
            info.size = len(evil)
            tar.addfile(info, io.BytesIO(evil))
    for samples in (list(read_tar(str(path))), list(from_shards(str(path)))):
        assert [sorted(k for k in s if isinstance(s[k], bytes)) for s in samples] == [
            ["pickle", "pkl", "pth", "pyd"]]
        assert all(samples[0][ext] == evil for ext in ("pyd", "pth", "pickle", "pkl"))
    assert not marker.exists()


def test_a_pickle_where_a_record_shard_is_expected_is_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "train-0.shard"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError):
        list(read_shard(str(path)))
    with pytest.raises(ValueError):
        list(from_shards(str(path)))
    assert not marker.exists()
