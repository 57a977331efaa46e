"""Reproducible benchmarks: each module ``hpmodel.bench.NAME`` defines
``run_bench(out_dir, quick=False, **options) -> dict`` that measures hpmodel against the
plain PyTorch way in one run, prints a table and writes ``NAME.json`` and ``NAME.png``
(through :func:`hpmodel.bench.common.write_results`).

Example::

    hpmodel bench scaling --out runs/bench
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from hpmodel.kernel.errors import HpmodelError
import hpmodel.bench as package
import json
import shlex
from hpmodel.reporting import Report


# A benchmark's command name where it differs from its module's (``hpmodel bench pipeline``).
COMMAND_NAMES = {"pipeline_parallel": "pipeline"}
MODULE_NAMES = {command: module for module, command in COMMAND_NAMES.items()}


def available_benchmarks() -> list[str]:
    return sorted(COMMAND_NAMES.get(info.name, info.name)
                  for info in pkgutil.iter_modules(package.__path__)
                  if info.name not in ("common",) and not info.name.startswith("_"))


def run_benchmark(name: str, out_dir: Path, quick: bool = False, **options: Any) -> dict:
    if name not in available_benchmarks():
        raise HpmodelError(f"benchmark '{name}' is unknown: choose one of "
                           f"{', '.join(available_benchmarks())}")
    module = importlib.import_module(f"hpmodel.bench.{MODULE_NAMES.get(name, name)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = module.run_bench(out_dir, quick=quick, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise HpmodelError(f"benchmark '{name}': {error}; see its module docstring") from None
        raise
    write_bench_report(out_dir, name, result, quick, options)
    return result


def write_bench_report(out_dir: Path, name: str, result: dict, quick: bool, options: dict) -> Path:
    """``report.md`` / ``report.html`` beside the benchmark's JSON: its table and its plot."""


    report = Report(f"hpmodel bench {name}")
    command = ["hpmodel", "bench", name, "--out", str(out_dir)] + (["--quick"] if quick else [])
    command += [arg for key, value in options.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    report.code(shlex.join(command))
    environment = result.get("environment") or result.get("host")
    if environment:
        report.table([{"fact": key, "value": value} for key, value in environment.items()])
    rows = result.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
        report.table(rows)
    else:
        report.code(json.dumps(result, indent=2, default=str)[:20000])
    report.image(out_dir / f"{name}.png", f"hpmodel bench {name}")
    markdown, _ = report.write(out_dir)
    return markdown
