"""Nothing executes on resume: the attacks of issue #16, run for real on real backups.

An attacker who can write to backup.dir appends a pickled object whose ``__reduce__``
runs a shell command to ``__0_0.distcp``, points a byte item of ``.metadata`` at it (or
replaces ``.metadata`` itself) and rewrites the manifest's checksums. Resuming must not
run the command, and must either use the previous backup or refuse with one line.
"""

import hashlib
import io
import json
import os
import pickle

import pytest
import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.filesystem import _StorageInfo

from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.backup import BackupAndRestore
from hpmodel.train.backup_format import step_folders

from hpmodel.train.backup_dcp import load_model_state

from test_backup import Crash, adamw, assert_identical, data, fit, model_fn, reference  # noqa: F401 (fixtures)


class Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def payload(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    return buffer.getvalue()


def rewrite_manifest(folder):
    """What an attacker does: recompute every checksum the manifest lists."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        blob = (folder / name).read_bytes()
        entry.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    path.write_text(json.dumps(manifest))


def plant_byte_item(folder, marker):
    """Append the payload to the DCP data file and point a tensor's index entry at it."""
    data_file = folder / "__0_0.distcp"
    offset = data_file.stat().st_size
    blob = payload(marker)
    with data_file.open("ab") as out:
        out.write(blob)
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # the attacker's own unpickling
    for fqn in ["optim.param_groups.0.lr"] + sorted(metadata.state_dict_metadata):
        if fqn.startswith("optim.state."):
            break
    metadata.state_dict_metadata[fqn] = BytesStorageMetadata()
    metadata.state_dict_metadata["optim.param_groups.0.lr"] = BytesStorageMetadata()
    for key in (fqn, "optim.param_groups.0.lr"):
        metadata.storage_data[MetadataIndex(key)] = _StorageInfo("__0_0.distcp", offset, len(blob))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    rewrite_manifest(folder)


def plant_metadata(folder, marker):
    (folder / ".metadata").write_bytes(pickle.dumps(Touch(marker)))
    rewrite_manifest(folder)


def test_the_payload_is_live(tmp_path):
    """The payload does run under DCP's default byte-item loader: the attack is real."""
    marker = tmp_path / "pwned"
    torch.load(io.BytesIO(payload(marker)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("plant", [plant_byte_item, plant_metadata])
def test_poisoned_newest_backup_is_skipped_and_previous_used(data, reference, tmp_path, capfd, plant):
    backups, marker = tmp_path / "backups", tmp_path / "pwned"
    first = BackupAndRestore(backups, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(15)])
    first.wait()  # the manifest is sealed in the background; a real crash would leave none
    newest = step_folders(backups)[0]
    plant(newest, marker)
    capfd.readouterr()
    backup = BackupAndRestore(backups, every_steps=2)
    resumed = fit(data, [backup])
    assert not marker.exists()
    skipped = [line for line in capfd.readouterr().err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and newest.name in skipped[0]
    assert backup.restored_from.name == "step-000000012"
    assert_identical(resumed.state_dict, reference)


def test_every_backup_poisoned_is_refused_in_one_line(data, tmp_path):
    backups, marker = tmp_path / "backups", tmp_path / "pwned"
    first = BackupAndRestore(backups, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(5)])
    first.wait()
    for folder in step_folders(backups):
        plant_byte_item(folder, marker)
    with pytest.raises(HpmodelError) as refused:
        fit(data, [BackupAndRestore(backups, every_steps=2)])
    assert not marker.exists()
    message = str(refused.value)
    assert "\n" not in message and "corrupt or unsafe" in message and "fresh_if_corrupt" in message
    fresh = BackupAndRestore(backups, every_steps=2, keep=True, fresh_if_corrupt=True)
    result = fit(data, [fresh])
    assert not marker.exists() and fresh.restored_from is None and result.summary["steps"] == 20


def test_loader_alone_refuses_the_byte_item(data, tmp_path):
    """Second wall: even without the folder check, DCP's loader here never unpickles bytes."""
    backups, marker = tmp_path / "backups", tmp_path / "pwned"
    first = BackupAndRestore(backups, every_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(data, [first, Crash(3)])
    first.wait()
    folder = step_folders(backups)[0]
    plant_byte_item(folder, marker)
    model = model_fn()()
    optimizer = adamw(model.parameters())
    with pytest.raises(Exception, match="pickled bytes"):
        load_model_state(model, optimizer, folder)
    assert not marker.exists()
