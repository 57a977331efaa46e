"""``hpmodel bench input``: hpmodel.data against torch.utils.data.DataLoader, same run.

Cases (each prints a table row, all go to ``input.json`` and ``input.png``):

(a) a pure-Python per-element map costing ~1 ms, equal worker counts: DataLoader
    workers vs ``map(num_parallel_calls=W, use_processes=True)`` (and threads, which
    the GIL serialises, for reference);
(b) many small records in many files behind an artificial 20 ms time-to-first-byte per
    file (an fsspec filesystem that sleeps on open): DataLoader workers each reading
    their files in turn vs ``from_shards(...).interleave(num_parallel_calls=AUTOTUNE)``,
    plus plain sequential reading;
(c) GPU only: a training loop with CPU-side augmentation; the input-bound fraction
    (consumer wait / wall) with and without parallel map + prefetch to the device.

Timing uses ``time.perf_counter``; the plot uses matplotlib.

Example::

    from hpmodel.bench.input import run_input_bench
    results = run_input_bench("out/bench", quick=True)
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

import fsspec
import torch
from fsspec.implementations.memory import MemoryFileSystem
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

import hpmodel.data as hd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the Agg backend

clock = time.perf_counter
BATCH = 32


# --- (a) a ~1 ms pure-Python map ------------------------------------------------------
def _calibrate(target: float = 1e-3) -> int:
    """Loop count of ``_spin`` that takes ``target`` seconds (median of 7 timings)."""
    n, times = 20_000, []
    for _ in range(7):
        t0 = clock()
        _spin(n)
        times.append(clock() - t0)
    return max(1, int(n * target / max(sorted(times)[3], 1e-9)))


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i & 7
    return s


class _SpinMap:
    """Picklable per-element transform: a busy Python loop, then a small tensor op."""

    def __init__(self, loops: int):
        self.loops = loops

    def __call__(self, element):
        x, y = element
        _spin(self.loops)
        return x * 2.0, y


class _MappedDataset(Dataset):
    def __init__(self, x, y, fn):
        self.x, self.y, self.fn = x, y, fn

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.fn((self.x[i], self.y[i]))


def _compare(makers: dict[str, Callable], n_elements: int, repeats: int) -> dict:
    """Median elements/second of full epochs (startup included) per contender.

    Contenders take turns within each repeat, so a noisy neighbour on the machine
    slows all of them alike rather than one.
    """
    rates: dict[str, list] = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make_iter in makers.items():
            t0 = clock()
            seen = sum(len(b[1]) for b in make_iter())
            if seen != n_elements:
                raise RuntimeError(f"{name} produced {seen} elements, expected {n_elements}")
            rates[name].append(n_elements / (clock() - t0))
    return {name: sorted(r)[len(r) // 2] for name, r in rates.items()}


def case_map(quick: bool, workers: int) -> dict:
    """(a): DataLoader vs hpmodel.data parallel map at equal worker counts.

    Example::

        case_map(quick=True, workers=2)["ratio_vs_dataloader"]
    """
    n = 1200 if quick else 4000
    repeats = 3
    x, y = torch.randn(n, 64), torch.arange(n)
    fn = _SpinMap(_calibrate())
    loader = DataLoader(_MappedDataset(x, y, fn), batch_size=BATCH, num_workers=workers)
    procs = (hd.from_tensors((x, y)).map(fn, num_parallel_calls=workers, use_processes=True)
             .batch(BATCH).prefetch(hd.AUTOTUNE))
    threads = (hd.from_tensors((x, y)).map(fn, num_parallel_calls=workers)
               .batch(BATCH).prefetch(hd.AUTOTUNE))
    rows = _compare({"torch DataLoader": lambda: iter(loader),
                     "hpmodel processes": lambda: iter(procs),
                     "hpmodel threads": lambda: iter(threads)}, n, repeats)
    return {"elements": n, "workers": workers, "elements_per_second": rows,
            "ratio_vs_dataloader": rows["hpmodel processes"] / rows["torch DataLoader"]}


# --- (b) many small files behind a 20 ms time-to-first-byte ---------------------------
class SlowMemoryFileSystem(MemoryFileSystem):
    """fsspec's in-memory filesystem with a fixed delay on every open (remote latency).

    Example::

        fsspec.register_implementation("slowmem", SlowMemoryFileSystem)
    """

    protocol = "slowmem"
    delay = 0.020

    @classmethod
    def _strip_protocol(cls, path):
        if path.startswith("slowmem://"):
            path = "memory://" + path[len("slowmem://"):]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            time.sleep(self.delay)
        return super()._open(path, mode, **kwargs)


class _ShardFiles(IterableDataset):
    """The DataLoader way: each worker reads its share of the files one after another."""

    def __init__(self, urls):
        self.urls = urls

    def __iter__(self):
        info = get_worker_info()
        mine = self.urls if info is None else self.urls[info.id::info.num_workers]
        for url in mine:
            yield from hd.read_shard(url)


def case_files(quick: bool, workers: int) -> dict:
    """(b): DataLoader vs sequential vs interleaved reading of latency-bound files.

    Example::

        case_files(quick=True, workers=2)["ratio_vs_dataloader"]
    """
    fsspec.register_implementation("slowmem", SlowMemoryFileSystem, clobber=True)
    files, per_file = (48, 16) if quick else (160, 16)
    root = f"memory://bench-input-{uuid.uuid4().hex}"
    n = files * per_file
    hd.write_shards((torch.randn(n, 16), torch.arange(n)), root, records_per_shard=per_file)
    urls = [u.replace("memory://", "slowmem://") for u in hd.list_shards(f"{root}/*.shard")]
    try:
        loader = DataLoader(_ShardFiles(urls), batch_size=BATCH, num_workers=workers)
        sequential = hd.from_shards(urls).batch(BATCH)
        interleaved = (hd.from_shards(urls).interleave(cycle_length=4,
                                                       num_parallel_calls=hd.AUTOTUNE)
                       .batch(BATCH).prefetch(hd.AUTOTUNE))
        rows = _compare({"torch DataLoader": lambda: iter(loader),
                         "hpmodel sequential": lambda: iter(sequential),
                         "hpmodel interleave": lambda: iter(interleaved)}, n, 1 if quick else 3)
        lookahead = next((s.get("lookahead") for s in interleaved.stats()["stages"]
                          if s["stage"] == "interleave"), None)
    finally:
        MemoryFileSystem().rm(root.replace("memory://", "/"), recursive=True)
    return {"files": files, "records_per_file": per_file, "time_to_first_byte_s": 0.020,
            "workers": workers, "elements_per_second": rows, "autotuned_lookahead": lookahead,
            "ratio_vs_dataloader": rows["hpmodel interleave"] / rows["torch DataLoader"],
            "ratio_vs_sequential": rows["hpmodel interleave"] / rows["hpmodel sequential"]}


# --- (c) GPU training loop with CPU-side augmentation ---------------------------------
def _augment(element):
    """Random crop (pad 4) + horizontal flip + normalise one uint8 CHW image, on the CPU."""
    image, label = element
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2,)).tolist()
    crop = padded[:, i:i + 32, j:j + 32]
    if torch.rand(()) < 0.5:
        crop = crop.flip(-1)
    return (crop.float() / 255.0 - 0.5) / 0.25, label


class _AugmentedImages(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return _augment((self.images[i], self.labels[i]))


def _train_loop(batches, model, opt, device, to_device: bool) -> dict:
    """One epoch; returns wall seconds and the seconds spent waiting for the next batch.

    ``steady_input_bound_fraction`` leaves out the first batch, whose wait is the epoch's
    start-up (workers filling their queues) rather than the steady state tf.data reports.
    """
    wait, steps, first_wait = 0.0, 0, 0.0
    t_start = clock()
    it = iter(batches)
    while True:
        t0 = clock()
        try:
            x, y = next(it)
        except StopIteration:
            break
        if to_device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        wait += clock() - t0
        if steps == 0:
            first_wait = wait
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the usual per-step sync (logging), so wait time is real
        steps += 1
    wall = clock() - t_start
    return {"steps": steps, "wall_seconds": wall, "input_bound_fraction": wait / wall,
            "steady_input_bound_fraction": (wait - first_wait) / max(wall - first_wait, 1e-9)}


def case_gpu(quick: bool, workers: int, device: torch.device | None = None,
             images: int | None = None, width: int = 256) -> dict:
    """(c): input-bound fraction of a GPU loop, DataLoader vs hpmodel with/without prefetch.

    Example::

        case_gpu(quick=True, workers=8)["runs"]
    """
    if device is None and not torch.cuda.is_available():
        return {"skipped": "needs a CUDA GPU: run `hpmodel bench input` on the GPU machine"}
    device = device or torch.device("cuda")
    n, batch = (8192, 256) if quick else (32768, 256)
    n = images or n
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    source = hd.from_tensors((images, labels)).shuffle(n, seed=0)
    plain = source.map(_augment).batch(batch)
    # The device stage is the prefetch: its thread pulls batches from the process
    # workers (W x 2 batches in flight) and copies them on a side stream.
    fast = (source.map(_augment, num_parallel_calls=workers, use_processes=True).batch(batch)
            .prefetch_to_device(device, buffer_size=4))
    loader = DataLoader(_AugmentedImages(images, labels), batch_size=batch, shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=True)
    # Warm up kernels and both sides' worker processes (both keep them across epochs).
    _train_loop(fast.take(4), model, opt, device, False)
    _train_loop(itertools.islice(loader, 4), model, opt, device, True)
    rows = {"torch DataLoader": _train_loop(loader, model, opt, device, True),
            "hpmodel no prefetch, sequential map": _train_loop(plain, model, opt, device, True),
            "hpmodel parallel map + prefetch to device": _train_loop(fast, model, opt, device,
                                                                      False)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"images": n, "batch": batch, "workers": workers, "device": name,
            "runs": rows, "hpmodel_stats": fast.stats()}


# --- report ------------------------------------------------------------------------
def _table(results: dict) -> str:
    lines = [f"{'case':<6}{'contender':<44}{'result':>22}{'vs DataLoader':>16}"]
    for key in ("a", "b"):
        case = results["cases"][key]
        base = case["elements_per_second"]["torch DataLoader"]
        for name, rate in case["elements_per_second"].items():
            lines.append(f"({key})   {name:<44}{rate:>14,.0f} elem/s{rate / base:>15.2f}x")
    gpu = results["cases"]["c"]
    if "skipped" in gpu:
        lines.append(f"(c)   skipped: {gpu['skipped']}")
    else:
        base = gpu["runs"]["torch DataLoader"]["input_bound_fraction"]
        for name, run in gpu["runs"].items():
            frac = run["input_bound_fraction"]
            lines.append(f"(c)   {name:<44}{frac:>13.1%} input-bound{'':>5}"
                         f"{'(DataLoader ' + format(base, '.1%') + ')':>11}")
            if "steady_input_bound_fraction" in run:
                lines.append(f"(c)   {'  steady state, first batch left out':<44}"
                             f"{run['steady_input_bound_fraction']:>13.1%} input-bound")
    return "\n".join(lines)


def _plot(results: dict, path: str) -> str | None:
    gpu = results["cases"]["c"]
    panels = 2 if "skipped" in gpu else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    titles = {"a": "(a) ~1 ms Python map, equal workers", "b": "(b) 20 ms time-to-first-byte files"}
    for ax, key in zip(axes, ("a", "b")):
        rates = results["cases"][key]["elements_per_second"]
        bars = ax.bar(range(len(rates)), list(rates.values()), color=["grey", "C0", "C1"])
        base = rates["torch DataLoader"]
        for bar, rate in zip(bars, rates.values()):
            ax.annotate(f"{rate / base:.2f}x", (bar.get_x() + bar.get_width() / 2, rate),
                        ha="center", va="bottom")
        ax.set_xticks(range(len(rates)), [n.replace(" ", "\n", 1) for n in rates], fontsize=8)
        ax.set_ylabel("elements / second")
        ax.set_title(titles[key], fontsize=10)
    if panels == 3:
        runs = gpu["runs"]
        axes[2].bar(range(len(runs)), [100 * r["input_bound_fraction"] for r in runs.values()])
        axes[2].axhline(5, color="red", linestyle="--", label="5 % target")
        axes[2].set_xticks(range(len(runs)), [n.replace(" ", "\n", 2) for n in runs], fontsize=7)
        axes[2].set_ylabel("input-bound % of wall time")
        axes[2].set_title("(c) GPU loop with CPU augmentation", fontsize=10)
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def run_input_bench(out_dir: str, quick: bool = False, workers: int | None = None) -> dict:
    """Run cases (a)-(c), print a table, write ``input.json`` and ``input.png`` to out_dir.

    Example::

        results = run_input_bench("runs/bench", quick=True)
        results["cases"]["a"]["ratio_vs_dataloader"]
    """
    os.makedirs(out_dir, exist_ok=True)
    cpus = os.cpu_count() or 1
    workers = workers or (min(8, cpus) if torch.cuda.is_available() else max(2, min(4, cpus)))
    results = {"benchmark": "input", "quick": quick, "workers": workers,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": {"cpus": cpus, "python": platform.python_version(),
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "cases": {}}
    results["cases"]["a"] = case_map(quick, workers)
    results["cases"]["b"] = case_files(quick, workers)
    results["cases"]["c"] = case_gpu(quick, workers)
    print(_table(results))
    note = _plot(results, os.path.join(out_dir, "input.png"))
    if note:
        results["plot"] = note
    with open(os.path.join(out_dir, "input.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    return results


def run_bench(out_dir, quick: bool = False, workers: int | None = None) -> dict:
    """The ``hpmodel bench input`` entry point (see :func:`run_input_bench`)."""
    return run_input_bench(str(out_dir), quick=quick, workers=workers)
