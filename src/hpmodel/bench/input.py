"""``hpmodel bench input``: hpmodel.data against tf.data and torch's DataLoader, same run.

Cases (each prints table rows, all go to ``input.json`` and ``input.png``):

(python_map) a pure-Python per-element map costing ~1 ms; (numpy_map) a ~1 ms numpy map
that releases the GIL (both timed over two epochs back to back, boundaries included;
hpmodel with its warm start, DataLoader with persistent workers); (interleave, interleave_ttfb) 16 record files, cycle_length 4,
AUTOTUNE, without and with a 20 ms time-to-first-byte per file; (cache) cache -> shuffle
-> batch, second epoch; (device) a training loop's input-bound fraction, whole epoch and
steady state (GPU when there is one, else CPU). Contenders take turns within each repeat.

tf.data runs when tensorflow is importable (an optional extra), in-process or, with
``--set tf_python=/path/to/venv/bin/python``, in a subprocess of that interpreter (see
``_input_tf.py``); otherwise it is skipped with a note. Timing uses
``time.perf_counter``; the plot uses matplotlib.

Example::

    from hpmodel.bench.input import run_input_bench
    results = run_input_bench("out/bench", quick=True, tf_python="/work/tfvenv/bin/python")
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import hpmodel.data as hd
from . import _input_cases as cases
from ._input_tf import TFContender, numpy_work, spin
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend

BATCH = cases.BATCH
EPOCHS = 2  # epochs per measurement in the map cases (epoch boundaries included)


def _calibrate(fn: Callable[[int], object], start: int, target: float = 1e-3) -> int:
    """The argument of ``fn`` that makes it take ``target`` seconds (median of 7)."""
    times = []
    for _ in range(7):
        t0 = cases.clock()
        fn(start)
        times.append(cases.clock() - t0)
    return max(1, int(start * target / max(sorted(times)[3], 1e-9)))


class _SpinMap:
    """Picklable per-element transform: a busy Python loop, then a small tensor op."""

    def __init__(self, loops: int):
        self.loops = loops

    def __call__(self, element):
        x, y = element
        spin(self.loops)
        return x * 2.0, y


class _NumpyMap:
    """Picklable per-element transform: numpy ufuncs that release the GIL (~1 ms)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, element):
        x, y = element
        return torch.from_numpy(numpy_work(x.numpy(), self.size)), y


class _MappedDataset(Dataset):
    def __init__(self, x, y, fn):
        self.x, self.y, self.fn = x, y, fn

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.fn((self.x[i], self.y[i]))


def case_map(quick: bool, workers: int, tf, gil_free: bool) -> dict:
    """A ~1 ms map, pure Python (``gil_free=False``) or numpy releasing the GIL.

    hpmodel runs threads and processes at ``workers``; DataLoader ``workers`` processes;
    tf.data ``tf.numpy_function`` with AUTOTUNE.

    Example::

        case_map(quick=True, workers=2, tf=None, gil_free=True)["elements_per_second"]
    """
    n = 1024 if quick else 4096
    x, y = torch.randn(n, 64), torch.arange(n)
    if gil_free:
        size = _calibrate(lambda s: numpy_work(np.zeros(64, np.float32), s), 16384)
        fn, tf_case, params = _NumpyMap(size), "numpy_map", {"n": n, "size": size,
                                                              "epochs": EPOCHS}
    else:
        loops = _calibrate(spin, 20_000)
        fn, tf_case, params = _SpinMap(loops), "python_map", {"n": n, "loops": loops,
                                                               "epochs": EPOCHS}
    loader = DataLoader(_MappedDataset(x, y, fn), batch_size=BATCH, num_workers=workers,
                        persistent_workers=True)
    procs = (hd.from_tensors((x, y)).map(fn, num_parallel_calls=workers, use_processes=True)
             .batch(BATCH).prefetch(hd.AUTOTUNE).with_options(warm_start=True))
    threads = (hd.from_tensors((x, y)).map(fn, num_parallel_calls=hd.AUTOTUNE)
               .batch(BATCH).prefetch(hd.AUTOTUNE).with_options(warm_start=True))

    def rate(make_iter, pipe=None):
        # two epochs back to back, as in training; a pipeline's prepared third epoch is
        # dropped (untimed) so that nothing of it runs during the next contender's turn
        after = (lambda: pipe.close(keep_workers=True)) if pipe is not None else None
        return cases.epoch_rate(make_iter, n, epochs=EPOCHS, after=after)

    contenders = {"hpmodel processes": lambda: rate(lambda: iter(procs), procs),
                  "hpmodel threads (AUTOTUNE)": lambda: rate(lambda: iter(threads), threads),
                  "torch DataLoader": lambda: rate(lambda: iter(loader))}
    if tf is not None:
        contenders["tf.data"] = lambda: tf.rate(tf_case, **params)
    rows = cases.compare(contenders, 3)
    ours = "hpmodel threads (AUTOTUNE)" if gil_free else "hpmodel processes"
    stats = (threads if gil_free else procs).stats()
    return {"elements": n, "epochs_per_measurement": EPOCHS, "workers": workers,
            "elements_per_second": rows, "ours": ours, "hpmodel_stats": stats,
            "map_cost": map_cost(stats, workers)}


def map_cost(stats: dict, workers: int) -> dict:
    """What one element cost inside the workers during the run, and the rate that allows.

    The map was calibrated to ~1 ms on an idle machine; with every worker busy, a core
    can be slower (shared caches, SMT siblings, frequency), and no loader can beat
    ``workers / cost``. Example::

        map_cost({"stages": [{"stage": "map", "elements": 10, "busy_seconds": 0.01}]}, 2)
    """
    stage = next((s for s in stats.get("stages", []) if s.get("stage") == "map"), None)
    if not stage or not stage.get("elements"):
        return {}
    cost = stage["busy_seconds"] / stage["elements"]
    workers = int(stage.get("workers") or workers)  # AUTOTUNE threads use the CPU budget
    return {"ms_per_element_in_workers": round(cost * 1e3, 4), "workers": workers,
            "elements_per_second_bound": round(workers / max(cost, 1e-9), 1)}


def _ratios(case: dict) -> None:
    rates = case["elements_per_second"]
    best = max(v for k, v in rates.items() if k.startswith("hpmodel"))
    case["ratio_vs_dataloader"] = round(best / rates["torch DataLoader"], 3)
    if "tf.data" in rates:
        case["ratio_vs_tf_data"] = round(best / rates["tf.data"], 3)
    case["why_waited"] = hd.why_waited(case.pop("hpmodel_stats"))["text"]
    case["ours_best"] = max((k for k in rates if k.startswith("hpmodel")), key=rates.get)


def _table(results: dict) -> str:
    lines = [f"{'case':<17}{'contender':<30}{'elem/s':>12}{'vs DataLoader':>15}{'vs tf.data':>12}"]
    for key, case in results["cases"].items():
        if "elements_per_second" not in case:
            continue
        rates = case["elements_per_second"]
        tf_rate = rates.get("tf.data")
        for name, rate in rates.items():
            vs_tf = f"{rate / tf_rate:>11.2f}x" if tf_rate else f"{'-':>12}"
            lines.append(f"{key:<17}{name:<30}{rate:>12,.0f}"
                         f"{rate / rates['torch DataLoader']:>14.2f}x{vs_tf}")
        lines.append(f"{'':<17}why waited: {case['why_waited']}")
        if case.get("map_cost"):
            cost = case["map_cost"]
            lines.append(f"{'':<17}map cost in the workers {cost['ms_per_element_in_workers']:.3f} ms"
                         f" per element: at most {cost['elements_per_second_bound']:,.0f} elem/s")
    for name, run in results["cases"]["device"]["runs"].items():
        lines.append(f"{'device':<17}{name:<44} whole epoch {run['input_bound_fraction']:.1%}"
                     f" / steady {run['steady_input_bound_fraction']:.1%} input-bound; waits: "
                     f"first {run['first_wait_ms']:.1f} ms, p50 {run['wait_ms_p50']:.2f}, "
                     f"p90 {run['wait_ms_p90']:.2f}, max {run['wait_ms_max']:.1f} ms, "
                     f"{run['steps_waiting_over_1ms']} steps over 1 ms")
    if results.get("tf_note"):
        lines.append(results["tf_note"])
    return "\n".join(lines)


def _plot(results: dict, path: str) -> None:
    keys = [k for k, c in results["cases"].items() if "elements_per_second" in c]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 4))
    for ax, key in zip(np.atleast_1d(axes), keys):
        rates = results["cases"][key]["elements_per_second"]
        base = rates["torch DataLoader"]
        bars = ax.bar(range(len(rates)), list(rates.values()),
                      color=["C0", "C1", "grey", "C3"][:len(rates)])
        for bar, rate in zip(bars, rates.values()):
            ax.annotate(f"{rate / base:.2f}x", (bar.get_x() + bar.get_width() / 2, rate),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rates)), [n.replace(" ", "\n", 1) for n in rates], fontsize=7)
        ax.set_title(key, fontsize=10)
    np.atleast_1d(axes)[0].set_ylabel("elements / second (ratio vs DataLoader)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_input_bench(out_dir: str, quick: bool = False, workers: int | None = None,
                    tf_python: str | None = None) -> dict:
    """Run every case, print a table, write ``input.json`` and ``input.png`` to out_dir.

    Example::

        results = run_input_bench("runs/bench", quick=True)
        results["cases"]["python_map"]["ratio_vs_dataloader"]
    """
    os.makedirs(out_dir, exist_ok=True)
    cpus = os.cpu_count() or 1
    workers = workers or (min(8, cpus) if torch.cuda.is_available() else max(2, min(4, cpus)))
    tf = TFContender(tf_python)
    results = {"benchmark": "input", "quick": quick, "workers": workers,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": {"cpus": cpus, "python": platform.python_version(),
                        "torch": torch.__version__, "tensorflow": tf.version,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "tf_note": tf.note, "cases": {}}
    contender = tf if tf.available else None
    try:
        c = results["cases"]
        c["python_map"] = case_map(quick, workers, contender, gil_free=False)
        c["numpy_map"] = case_map(quick, workers, contender, gil_free=True)
        c["interleave"] = cases.case_files(quick, workers, contender, ttfb=0.0)
        c["interleave_ttfb"] = cases.case_files(quick, workers, contender, ttfb=0.020)
        c["cache"] = cases.case_cache(quick, contender)
        c["device"] = cases.case_device(quick, workers)
    finally:
        tf.close()
    for case in results["cases"].values():
        if "elements_per_second" in case:
            _ratios(case)
    results["cases"]["device"]["why_waited"] = hd.why_waited(
        results["cases"]["device"].pop("hpmodel_stats"))["text"]
    print(_table(results))
    _plot(results, os.path.join(out_dir, "input.png"))
    with open(os.path.join(out_dir, "input.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    return results


def run_bench(out_dir, quick: bool = False, workers: int | None = None,
              tf_python: str | None = None) -> dict:
    """The ``hpmodel bench input`` entry point (see :func:`run_input_bench`)."""
    return run_input_bench(str(out_dir), quick=quick, workers=workers, tf_python=tf_python)
