"""The on-disk format of a backup: one folder per step, a JSON manifest with checksums.

Layout of ``DIR/step-000000012/``::

    __0_0.distcp, .metadata     model + optimizer tensors, written by torch.distributed.checkpoint
    state.json                  model + optimizer non-tensor leaves (lr, betas …), JSON
    trainer.json                counters, history, LR schedule, grad scaler (rank 0)
    rank-0.safetensors/.json    that rank's random-number streams and data position
    manifest.json               sha256 of every file above, fingerprint; written LAST

A folder without a manifest is an interrupted write; a file whose sha256 differs from the
manifest is corrupt. Either way the previous backup is used. Nothing here unpickles code:
tensors are safetensors or DCP tensors, the rest JSON, and DCP's pickled ``.metadata`` is
read with a restricted unpickler (:mod:`hpmodel.train.backup_dcp`). The checksums detect
damage, not attacks (an attacker rewrites them); safety comes from the loaders.

Example::

    write_manifest(folder, fingerprint={"model": {...}}, info={"global_step": 12})
    path, problems = find_backup("ckpt/")   # newest folder whose manifest verifies
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from hpmodel.kernel.files import write_json
from safetensors.torch import load_file, save

FORMAT_VERSION = 2  # 2: non-tensor state as JSON (1 pickled it inside DCP)
MANIFEST = "manifest.json"
FOLDER = re.compile(r"^step-(\d+)$")


def folder_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def step_folders(root: str | Path) -> list[Path]:
    """Backup folders under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and FOLDER.match(p.name)]
    return sorted(folders, key=lambda p: int(FOLDER.match(p.name).group(1)), reverse=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):  # hashlib frees the GIL per block
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, fingerprint: dict, info: dict) -> None:
    """Checksum every file in ``folder`` and write ``manifest.json`` atomically, last."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST
                   and not p.name.startswith("."))
    files += [p for p in folder.iterdir() if p.name == ".metadata"]  # DCP's index

    def seal(path: Path) -> dict:
        with path.open("rb") as handle:  # the data must be on disk before the manifest says it is
            os.fsync(handle.fileno())
        return {"sha256": sha256(path), "bytes": path.stat().st_size}

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:  # one file per thread
        entries = dict(zip([p.name for p in files], pool.map(seal, files)))
    manifest = {"format": FORMAT_VERSION, "fingerprint": fingerprint, **info, "files": entries}
    write_json(folder / MANIFEST, manifest)


def verify(folder: Path) -> dict:
    """The manifest of ``folder`` if every file matches it; else raise ValueError(reason)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ValueError("no manifest (the write was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise ValueError("manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("manifest.json has no table of files")
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {manifest.get('format')} is not {FORMAT_VERSION} (written by another "
                         "hpmodel version; finish that run with it, or delete the backup)")
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{name} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise ValueError(f"{name} is truncated ({path.stat().st_size} of {entry['bytes']} bytes)")
        if sha256(path) != entry["sha256"]:
            raise ValueError(f"{name} is corrupt (sha256 differs from the manifest)")
    return manifest


def checked_manifest(folder: Path, check: Callable[[Path, dict], None] | None = None) -> dict:
    """``folder``'s manifest once its files verify and ``check(folder, manifest)`` passes;
    ValueError (or OSError, KeyError, TypeError: see ``BACKUP_PROBLEMS``) naming why not."""
    manifest = verify(folder)
    if check is not None:
        check(folder, manifest)
    return manifest


BACKUP_PROBLEMS = (ValueError, OSError, KeyError, TypeError)  # what an unusable backup raises


def find_backup(root: str | Path, check: Callable[[Path, dict], None] | None = None
                ) -> tuple[Path | None, dict, list[str]]:
    """The newest backup under ``root`` that verifies (and passes ``check(folder, manifest)``,
    which raises ValueError), its manifest, and one line per newer backup skipped (why)."""
    problems = []
    for folder in step_folders(root):
        try:
            return folder, checked_manifest(folder, check), problems
        except BACKUP_PROBLEMS as error:
            problems.append(f"backup '{folder}' skipped: {error}; trying the previous one")
    return None, {}, problems


def is_valid(folder: Path, check: Callable[[Path, dict], None] | None = None) -> bool:
    try:
        checked_manifest(folder, check)
        return True
    except BACKUP_PROBLEMS:
        return False


def prune(root: str | Path, keep_last: int = 2, known_good: set[str] = frozenset(),
          check: Callable[[Path, dict], None] | None = None) -> None:
    """Keep the ``keep_last`` newest valid backups and whatever is newer than all of them;
    remove the rest. Folders named in ``known_good`` count as valid without rehashing.

    Example::

        prune("ckpt/", keep_last=2, known_good={"step-000000012"})
    """
    valid = 0
    for folder in step_folders(root):
        if valid >= keep_last:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.name in known_good or is_valid(folder, check):
            valid += 1
        elif valid:  # invalid and older than a valid backup: nothing would ever load it
            shutil.rmtree(folder, ignore_errors=True)


def fingerprint_mismatch(stored: dict, current: dict) -> list[str]:
    """Names of the fingerprint entries that differ, e.g. ``['config.model.width']``."""
    differences = []
    for part in sorted(set(stored) | set(current)):
        old, new = stored.get(part), current.get(part)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [f"{part}.{key}" for key in sorted(set(old) | set(new))
                            if old.get(key) != new.get(key)]
        elif old != new:
            differences.append(part)
    return differences


# -- nested state ↔ safetensors + JSON ------------------------------------------------------
def save_nested(folder: Path, stem: str, state: Any) -> None:
    """Write ``state`` (dicts/lists of tensors and plain data) as STEM.safetensors + STEM.json."""

    tensors: dict[str, torch.Tensor] = {}

    def strip(value: Any, key: str) -> Any:
        if torch.is_tensor(value):
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {"__dict__": [[strip(k, f"{key}/k{i}"), strip(v, f"{key}/{i}")]
                                 for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, (list, tuple)):
            return {"__list__": [strip(v, f"{key}/{i}") for i, v in enumerate(value)],
                    "tuple": isinstance(value, tuple)}
        return value

    skeleton = strip(state, "s")
    # Plain writes: the folder is new, and the manifest (written last, after an fsync of
    # every file) is what makes a backup count; an fsync here would only stall the loop.
    (folder / f"{stem}.safetensors").write_bytes(save(tensors))
    (folder / f"{stem}.json").write_text(json.dumps(skeleton))


def load_nested(folder: Path, stem: str) -> Any:
    """The inverse of :func:`save_nested`."""

    tensors = load_file(str(folder / f"{stem}.safetensors"))

    def build(value: Any) -> Any:
        if isinstance(value, dict) and "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if isinstance(value, dict) and "__dict__" in value:
            return {build(k): build(v) for k, v in value["__dict__"]}
        if isinstance(value, dict) and "__list__" in value:
            items = [build(v) for v in value["__list__"]]
            return tuple(items) if value.get("tuple") else items
        return value

    return build(json.loads((folder / f"{stem}.json").read_text()))

