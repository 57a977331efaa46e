"""Read the listening TCP sockets of a live process tree from /proc (Linux), as an attacker
on the network would see them: every ``LISTEN`` socket a process of the tree holds open."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

LISTEN = "0A"  # the TCP state code of a listening socket in /proc/net/tcp
LOOPBACK = {"127.0.0.1", "::1"}


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (from each process's parent id in /proc/PID/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def decode_address(hex_address: str) -> tuple[str, int]:
    """/proc/net/tcp's ``0100007F:1F90`` → ("127.0.0.1", 8080); tcp6 words are host-endian."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = struct.unpack("<" + "I" * (len(raw) // 4), raw)
    packed = struct.pack(">" + "I" * len(words), *words)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed), int(port, 16)
    address = ipaddress.IPv6Address(packed)
    return str(address.ipv4_mapped or address), int(port, 16)


def listening(pid: int) -> dict[tuple[str, int], int]:
    """(address, port) → pid of every listening socket held by the tree rooted at ``pid``."""
    found = {}
    for member in process_tree(pid):
        inodes = socket_inodes(member)
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{member}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[3] == LISTEN and fields[9] in inodes:
                    found[decode_address(fields[1])] = member
    return found


def watch(command: list[str], *, env: dict, cwd, timeout: float = 300,
          every_s: float = 0.1) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``command``, sampling its tree's listening sockets until it ends."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=cwd)
    seen: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        seen.update(listening(process.pid))
        time.sleep(every_s)
    if process.poll() is None:
        process.kill()
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), seen
