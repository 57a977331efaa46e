"""``hpmodel bench scaling --quick`` runs real launches on CPU and writes its table, JSON and plot."""

import json

from conftest import run_cli


def test_quick_scaling_bench_writes_json_and_plot(tmp_path):
    proc = run_cli("bench", "scaling", "--quick", "--out", str(tmp_path),
                   "--set", 'strategies=["plain-ddp", "mirrored-overlap"]', timeout=240, check=True)
    assert "scaling efficiency" in proc.stdout and "vs plain DDP" in proc.stdout
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert (tmp_path / "scaling.png").stat().st_size > 0
    rows = {(r["strategy"], r["devices"]): r for r in result["rows"]}
    assert set(rows) == {("plain-ddp", 1), ("plain-ddp", 2), ("mirrored-overlap", 1), ("mirrored-overlap", 2)}
    for row in rows.values():
        assert row["examples/s"] > 0 and "error" not in row
    assert rows[("plain-ddp", 1)]["efficiency"] == 1.0
    assert rows[("plain-ddp", 2)]["overhead %"] == 0.0
    expected = rows[("mirrored-overlap", 2)]["examples/s"] / (2 * rows[("mirrored-overlap", 1)]["examples/s"])
    assert abs(rows[("mirrored-overlap", 2)]["efficiency"] - expected) < 1e-3
