"""The demo end to end at a reduced size: stages, the resume event, and a report whose
numbers all come from the stages' summary.json files; the HTML renders in headless Chromium;
its console output, read through pipes as a log would be, has no tracebacks, no third-party
warnings and no cut column names. One demo run serves every test (it takes about a minute)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from hpmodel.reporting.console import format_value

ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


# lines hpmodel writes on purpose; anything else that says Warning or Traceback is noise
OWN_PREFIXES = ("hpmodel:", "hpmodel ", "compress: variant ", "[1/5]", "[2/5]", "[3/5]", "[4/5]",
                "[5/5]", "teacher:", "student:")
ALARMS = ("Traceback", "Warning", "WARNING")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", "--quick", "--out", str(out), timeout=600)  # stdout/stderr are pipes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


def console_lines(proc) -> list[str]:
    """Every line the demo printed, a carriage return (a progress frame) also ending one."""
    return [line for text in (proc.stdout, proc.stderr) for line in re.split(r"[\r\n]", text)]


def test_console_output_has_no_tracebacks_or_foreign_warnings(demo_run):
    _, proc = demo_run
    noise = [line for line in console_lines(proc)
             if any(word in line for word in ALARMS) and not line.lstrip().startswith(OWN_PREFIXES)]
    assert not noise, "third-party noise in the demo's output:\n" + "\n".join(noise[:10])


def test_console_output_is_plain_on_a_pipe(demo_run):
    _, proc = demo_run
    assert "\r" not in proc.stdout + proc.stderr, "a progress bar drew frames into a pipe"
    assert "\x1b[" not in proc.stdout + proc.stderr, "colour codes in a pipe"


def test_events_are_one_hpmodel_line_each(demo_run):
    _, proc = demo_run
    lines = console_lines(proc)
    assert sum("killed by SIGKILL" in line for line in lines) == 1
    assert sum(line.startswith("hpmodel:") and "restarting the group" in line for line in lines) == 1
    assert sum(line.startswith("hpmodel: resumed from backup") for line in lines) == 1


def test_no_table_header_is_truncated(demo_run):
    _, proc = demo_run
    tables = [line for line in console_lines(proc) if line[:1] in "┃│┏┡└" or line.startswith(" ")]
    assert tables, "the demo printed no summary table"
    cut = [line for line in tables if "…" in line]
    assert not cut, "a table cut a cell:\n" + "\n".join(cut)
    headers = {cell.strip() for line in tables if line.startswith("┃") for cell in line.split("┃")}
    assert {"metric", "value"} <= headers


def summary_values(out: Path) -> set[str]:
    """Every scalar in every summary.json under ``out``, formatted as the report formats them."""
    values: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif node is not None and not isinstance(node, bool):
            values.add(format_value(node))
            if isinstance(node, float):
                values.add(f"{node:.4f}")

    for path in out.rglob("summary.json"):
        walk(json.loads(path.read_text()))
    return values


def test_demo_writes_reports_with_resume_event(demo_dir):
    md = (demo_dir / "report.md").read_text()
    assert (demo_dir / "report.html").is_file()
    for stage in ("teacher", "student", "compressed"):
        assert (demo_dir / stage / "summary.json").is_file()
    teacher = json.loads((demo_dir / "teacher" / "summary.json").read_text())
    assert teacher["restarts"] == 1 and teacher["resumed_at_step"] > 0
    assert f"at step {teacher['resumed_at_step']}" in md and "SIGKILLed" in md


def test_every_number_in_the_report_comes_from_a_summary(demo_dir):
    known = summary_values(demo_dir)
    md = (demo_dir / "report.md").read_text()
    cells = [c.strip() for line in md.splitlines() if line.startswith("| ") for c in line.split("|")]
    numbers = [c for c in cells if re.fullmatch(r"-?[\d,]+(\.\d+)?", c)]
    numbers += re.findall(r"\b\d\.\d{4}\b", md)  # headline metrics
    assert len(numbers) > 20
    unknown = [n for n in numbers if n not in known]
    assert not unknown, f"numbers not in any summary.json: {unknown[:10]}"


def test_report_renders_in_headless_chromium(demo_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = (demo_dir / "report.html").as_uri()
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<h1>hpmodel demo" in dom.stdout
    assert dom.stdout.count("data:image/png;base64,") >= 3  # plots are inline
    assert "Uncaught" not in dom.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "demo-report.png"
    shot.unlink(missing_ok=True)
    done = subprocess.run([*flags, "--window-size=1100,2600", f"--screenshot={shot}", page],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 50_000
