"""Lock files: one run at a time per run directory and per backup directory.

The operating system does the heavy lifting: ``os.link`` of a fully written temporary file
onto the lock's name is atomic and fails when the name exists (the ``O_EXCL`` guarantee,
without a moment where the lock exists but is still empty). The lock holds JSON naming
who holds it — pid, host, command — so a second run stops with one line saying so. A lock
whose pid is dead on this host is stale (a run that was SIGKILLed) and is taken over; a
lock from another host is never judged stale (its pid means nothing here).

Example::

    with DirectoryLock("runs/digits", "run directory", fix="give another --out"):
        ...  # write the run directory
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpmodel.kernel.errors import HpmodelError

LOCK_NAME = ".hpmodel.lock"


class DirectoryLock:
    """Hold ``DIR/.hpmodel.lock`` while a run writes ``DIR``; ``what`` and ``fix`` word the
    one-line error a second holder gets.

    Example::

        lock = DirectoryLock("ckpt", "backup.dir", fix="give each run its own backup.dir")
        lock.acquire(); ...; lock.release()
    """

    def __init__(self, directory: str | Path, what: str, fix: str, command: str | None = None):
        self.directory, self.what, self.fix = Path(directory), what, fix
        self.path = self.directory / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self.held = False

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> None:
        """Take the lock, or raise one HpmodelError naming its live holder."""
        for _ in range(3):  # a stale lock removed by us, or by a racing run: try again
            try:
                created = self._try_create()
            except OSError as error:
                raise HpmodelError(f"{self.what} '{self.directory}' cannot be written "
                                   f"({error.strerror or error}): give a directory you can write to") from None
            if created:
                self.held = True
                return
            holder = read_holder(self.path)
            if holder is None or not is_stale(holder):
                raise HpmodelError(self._held_message(holder))
            self.path.unlink(missing_ok=True)
        raise HpmodelError(self._held_message(read_holder(self.path)))

    def release(self) -> None:
        """Remove the lock if it is still ours (a run may have deleted its own directory)."""
        if self.held:
            holder = read_holder(self.path)
            if holder is not None and _is_this_process(holder):
                self.path.unlink(missing_ok=True)
            self.held = False

    def _try_create(self) -> bool:
        text = json.dumps(self.record()).encode()
        handle, temp = tempfile.mkstemp(dir=self.directory, prefix=".hpmodel.lock.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(text)
            try:
                os.link(temp, self.path)  # atomic; fails if the lock exists
                return True
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: O_EXCL, then the content
                return self._create_exclusive(text)
        finally:
            Path(temp).unlink(missing_ok=True)

    def _create_exclusive(self, text: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        return True

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            return (f"{self.what} '{self.directory}' is locked by '{self.path}', which names no "
                    f"holder: {self.fix}, or delete that file if no run uses the directory")
        who = "this process" if _is_this_process(holder) else f"pid {holder.get('pid')}"
        return (f"{self.what} '{self.directory}' is in use by {who} on host {holder.get('host')} "
                f"since {holder.get('started')} ({holder.get('command')!r}): {self.fix}, or wait "
                f"for it to finish (delete '{self.path}' only if that process is gone)")


def make_directory(path: str | Path, what: str, fix: str) -> Path:
    """``mkdir -p path``, or one HpmodelError saying why not (a file there, no permission).

    Example::

        make_directory("runs/x", "--out", "give a directory for the run")
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HpmodelError(f"{what} '{path}' is a file, not a directory: {fix} (a new or existing directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HpmodelError(f"{what} '{path}' cannot be created ({error.strerror or error}): "
                           f"{fix} where you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise HpmodelError(f"{what} '{path}' is not writable: {fix} where you can write")
    return path


def read_holder(path: Path) -> dict | None:
    """The lock's JSON record, or None when it is missing, unreadable or not a record."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def is_stale(holder: dict) -> bool:
    """True when the holder ran on this host and its process no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _is_this_process(holder: dict) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


__all__ = ["DirectoryLock", "LOCK_NAME", "is_stale", "make_directory", "read_holder"]
