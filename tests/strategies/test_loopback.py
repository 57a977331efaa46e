"""Nothing listens beyond loopback in a single-host run, checked by the attack itself: while
a real 2-process Mirrored run and a parameter-server run train, every listening TCP socket
of their process trees (read from /proc) must be bound to 127.0.0.1 or ::1."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytest
import torch.distributed as dist

from conftest import ROOT, digits_mlp_toml, hpmodel_env
from hpmodel.kernel.errors import HpmodelError
from hpmodel.kernel.network import bound_listener, is_loopback, store_server
from listening_helpers import LOOPBACK, listening, watch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PS_CONFIG = digits_mlp_toml(max_steps=30)


def hpmodel(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpmodel", *args]


def assert_loopback_only(proc, seen) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seen, "no listening socket was seen: the probe did not work"
    exposed = {address: pid for address, pid in seen.items() if address[0] not in LOOPBACK}
    assert not exposed, f"listening beyond loopback (address → pid): {exposed}"


def test_a_store_server_listens_on_loopback_only():
    store = store_server("127.0.0.1", 0, timeout=timedelta(seconds=10))
    addresses = [address for address in listening(os.getpid()) if address[1] == store.port]
    assert addresses == [("127.0.0.1", store.port)]
    client = dist.TCPStore("127.0.0.1", store.port, is_master=False, timeout=timedelta(seconds=10))
    client.set("key", "value")
    assert store.get("key") == b"value"
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.5")


def test_an_address_this_machine_lacks_is_one_line():
    with pytest.raises(HpmodelError, match=r"cannot listen on 192\.0\.2\.1:0 .*address of this machine"):
        bound_listener("192.0.2.1")  # TEST-NET-1: never assigned to a host


def test_mirrored_two_processes_listen_on_loopback_only(tmp_path):
    proc, seen = watch(hpmodel("train", "examples/digits.toml", "--strategy", "mirrored", "--devices", "2",
                               "--set", "train.epochs=1", "--set", "train.max_steps=30",
                               "--set", "train.progress=false", "--set", "model.width=8",
                               "--out", str(tmp_path / "run")), env=hpmodel_env(), cwd=ROOT)
    assert_loopback_only(proc, seen)


@pytest.mark.slow
def test_parameter_server_listens_on_loopback_only(tmp_path):
    config = tmp_path / "ps.toml"
    config.write_text(PS_CONFIG)
    proc, seen = watch(hpmodel("train", str(config), "--strategy", "parameter-server", "--workers", "2",
                               "--servers", "1", "--set", "strategy.connect_timeout_s=90",
                               "--out", str(tmp_path / "ps")), env=hpmodel_env(), cwd=ROOT)
    assert_loopback_only(proc, seen)


def test_parameter_server_bind_address_not_on_this_machine_is_one_line(tmp_path):
    config = tmp_path / "ps.toml"
    config.write_text(PS_CONFIG)
    proc, _ = watch(hpmodel("train", str(config), "--strategy", "parameter-server",
                            "--set", 'strategy.bind_address="192.0.2.1"', "--out", str(tmp_path / "ps")),
                    env=hpmodel_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "cannot listen on 192.0.2.1" in proc.stderr.strip().splitlines()[-1]
