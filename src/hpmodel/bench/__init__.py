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

from hpmodel.errors import HpmodelError


def available_benchmarks() -> list[str]:
    import hpmodel.bench as package

    return sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                  if info.name not in ("common",) and not info.name.startswith("_"))


def run_benchmark(name: str, out_dir: Path, quick: bool = False, **options: Any) -> dict:
    if name not in available_benchmarks():
        raise HpmodelError(f"benchmark '{name}' is unknown: choose one of "
                           f"{', '.join(available_benchmarks())}")
    module = importlib.import_module(f"hpmodel.bench.{name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return module.run_bench(out_dir, quick=quick, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise HpmodelError(f"benchmark '{name}': {error}; see its module docstring") from None
        raise
