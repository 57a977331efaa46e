"""Tables fit the console: column names are never cut, a too-wide table becomes rows."""

import io

from rich.console import Console

from hpmodel.reporting.console import allot, print_rows, print_summary

ROWS = [{"variant": "fp32", "test_accuracy": 0.9712, "parameters": 12345,
         "x_small_batch_latency_ms": 0.0712, "path": "runs/compress/fp32/model.safetensors"},
        {"variant": "int8-static", "test_accuracy": 0.9688, "parameters": 12345,
         "x_small_batch_latency_ms": 0.0433, "path": "runs/compress/int8-static/model.onnx"}]


def render(width: int, fn, *args, **kwargs) -> str:
    out = io.StringIO()
    fn(*args, console=Console(width=width, file=out, color_system=None, force_terminal=False), **kwargs)
    return out.getvalue()


def header_cells(text: str) -> list[str]:
    """The cells of the header line of a boxed table (the line under the top border)."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┏"))
    return [cell.strip() for cell in lines[top + 1].strip().strip("┃").split("┃")]


def test_a_table_that_fits_keeps_every_column_name_whole():
    rows = [{k: r[k] for k in ("variant", "test_accuracy", "parameters")} for r in ROWS]
    text = render(60, print_rows, rows, title="compress")
    assert header_cells(text) == ["variant", "test_accuracy", "parameters"]
    assert "…" not in text and all(len(line) <= 60 for line in text.splitlines())


def test_a_long_value_wraps_instead_of_being_cut():
    rows = [{"variant": r["variant"], "path": r["path"]} for r in ROWS]
    text = render(40, print_rows, rows, title="compress")
    assert "…" not in text and header_cells(text) == ["variant", "path"]
    flat = "".join(line.strip("│ ") for line in text.splitlines())
    assert "model.safetensors" in flat.replace(" ", "").replace("│", "")


def test_a_table_wider_than_the_console_becomes_rows():
    text = render(60, print_rows, ROWS, title="compress")
    assert "…" not in text and all(len(line) <= 60 for line in text.splitlines())
    for name in ROWS[0]:  # every key whole, once per record
        assert sum(line.split()[0] == name for line in text.splitlines() if line.split()) == 2
    wide = render(200, print_rows, ROWS, title="compress")
    assert header_cells(wide) == list(ROWS[0])


def test_summary_keys_are_not_cut():
    summary = {"teacher_test_accuracy_mean_over_seeds": 0.9712, "examples_per_second": 123456.0}
    text = render(40, print_summary, summary, title="summary")
    assert "…" not in text and header_cells(text) == ["metric", "value"]
    assert "teacher_test_accuracy_mean_over_seeds"[:20] in text


def test_allot_grows_the_longest_column_first():
    assert allot([4, 7], [4, 40], 30) == [4, 19]
    assert allot([4, 7], [5, 8], 200) == [5, 8]
