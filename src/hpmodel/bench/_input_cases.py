"""Cases of ``hpmodel bench input`` over files, caches and a training loop.

(interleave) 16 record files, ``cycle_length=4``, AUTOTUNE, with and without a 20 ms
time-to-first-byte (an fsspec filesystem that sleeps on open); (cache) cache -> shuffle
-> batch, second epoch; (device) a training loop with CPU-side augmentation: the
input-bound fraction over the whole epoch and in steady state, on the GPU when there is
one, else on the CPU. fsspec supplies the slow filesystem; torch the loop.

Example::

    from hpmodel.bench._input_cases import case_cache
    case_cache(quick=True, tf=None)["elements_per_second"]
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

import fsspec
import torch
from fsspec.implementations.memory import MemoryFileSystem
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info

import hpmodel.data as hd
from ._input_tf import BATCH, clock


def epoch_rate(make_iter: Callable, n: int, epochs: int = 1,
               after: Callable[[], None] | None = None) -> float:
    """Elements/second of ``epochs`` back-to-back full epochs of ``make_iter()`` (start-up
    and epoch boundaries included); ``after`` runs untimed (e.g. a pipeline's ``close``).

    Example::

        epoch_rate(lambda: iter([(None, [0, 1])]), 2)
    """
    t0 = clock()
    for _ in range(epochs):
        seen = sum(len(b[1]) for b in make_iter())
        if seen != n:
            raise RuntimeError(f"a contender produced {seen} elements, expected {n}")
    rate = n * epochs / (clock() - t0)
    if after is not None:
        after()  # untimed, and before the next contender: nothing left running
    return rate


def compare(contenders: dict[str, Callable[[], float]], repeats: int) -> dict:
    """Median rate per contender; they take turns within each repeat (A/B interleaved),
    so a noisy neighbour on the machine slows all of them alike.

    Example::

        compare({"a": lambda: 1.0}, 3)  # {'a': 1.0}
    """
    rates: dict[str, list] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            rates[name].append(measure())
    return {name: sorted(r)[len(r) // 2] for name, r in rates.items()}


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
        if "r" in mode and self.delay:
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


def case_files(quick: bool, workers: int, tf, ttfb: float) -> dict:
    """16 record files, cycle_length 4, AUTOTUNE; ``ttfb`` seconds of latency per open.

    Example::

        case_files(quick=True, workers=2, tf=None, ttfb=0.0)["elements_per_second"]
    """
    fsspec.register_implementation("slowmem", SlowMemoryFileSystem, clobber=True)
    SlowMemoryFileSystem.delay = ttfb
    files, per_file, width = 16, (256 if quick else 2048), 16
    root = f"memory://bench-input-{uuid.uuid4().hex}"
    n = files * per_file
    hd.write_shards((torch.randn(n, width), torch.arange(n)), root, records_per_shard=per_file)
    urls = [u.replace("memory://", "slowmem://") for u in hd.list_shards(f"{root}/*.shard")]
    try:
        loader = DataLoader(_ShardFiles(urls), batch_size=BATCH, num_workers=workers)
        interleaved = (hd.from_shards(urls).interleave(cycle_length=4,
                                                       num_parallel_calls=hd.AUTOTUNE)
                       .batch(BATCH).prefetch(hd.AUTOTUNE))
        contenders = {"hpmodel interleave": lambda: epoch_rate(lambda: iter(interleaved), n),
                      "torch DataLoader": lambda: epoch_rate(lambda: iter(loader), n)}
        if tf is not None:
            contenders["tf.data"] = lambda: tf.rate("interleave", files=files,
                                                    per_file=per_file, width=width, ttfb=ttfb)
        rows = compare(contenders, 1 if quick else 3)
        stats = interleaved.stats()
    finally:
        MemoryFileSystem().rm(root.replace("memory://", "/"), recursive=True)
    return {"files": files, "records_per_file": per_file, "time_to_first_byte_s": ttfb,
            "workers": workers, "elements_per_second": rows, "ours": "hpmodel interleave",
            "hpmodel_stats": stats}


def case_cache(quick: bool, tf) -> dict:
    """cache -> shuffle(buffer, seed) -> batch: the rate of the second epoch.

    Example::

        case_cache(quick=True, tf=None)["elements_per_second"]["hpmodel"]
    """
    n, width = (8192 if quick else 65536), 16
    buffer = n // 2
    x, y = torch.randn(n, width), torch.arange(n)
    pipe = hd.from_tensors((x, y)).cache().shuffle(buffer, seed=0).batch(BATCH)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    epoch = [0]

    def ours() -> float:
        pipe.set_epoch(epoch[0])
        epoch_rate(lambda: iter(pipe), n)  # the first epoch fills the cache
        pipe.set_epoch(epoch[0] + 1)
        epoch[0] += 2
        return epoch_rate(lambda: iter(pipe), n)

    contenders = {"hpmodel": ours, "torch DataLoader": lambda: epoch_rate(lambda: iter(loader), n)}
    if tf is not None:
        contenders["tf.data"] = lambda: tf.rate("cache_shuffle", n=n, width=width, buffer=buffer)
    rows = compare(contenders, 3)
    return {"elements": n, "shuffle_buffer": buffer, "elements_per_second": rows,
            "ours": "hpmodel", "hpmodel_stats": pipe.stats()}


# --- (device) a training loop with CPU-side augmentation -----------------------------
MEASURED = 3  # epochs measured per loader after its warm-up epoch
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
    wait, steps, first_wait, waits = 0.0, 0, 0.0, []
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
        waits.append(clock() - t0)
        wait += waits[-1]
        if steps == 0:
            first_wait = wait
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the usual per-step sync (logging), so wait time is real
        steps += 1
    wall = clock() - t_start
    later = sorted(waits[1:]) or [0.0]
    return {"steps": steps, "wall_seconds": wall, "input_bound_fraction": wait / wall,
            "steady_input_bound_fraction": (wait - first_wait) / max(wall - first_wait, 1e-9),
            # where the wait goes: the first batch, then the per-step distribution
            "first_wait_ms": first_wait * 1e3,
            "wait_ms_p50": later[len(later) // 2] * 1e3,
            "wait_ms_p90": later[int(len(later) * 0.9)] * 1e3,
            "wait_ms_max": later[-1] * 1e3,
            "steps_waiting_over_1ms": sum(w > 1e-3 for w in later)}


def case_device(quick: bool, workers: int, device: torch.device | None = None) -> dict:
    """Input-bound fraction of a training loop (whole epoch and steady state), per loader.

    On the GPU when there is one; otherwise on the CPU with a small model (the loop then
    shares the cores with the input workers, so the fractions only rank the loaders).
    Each loader runs a warm-up epoch first, then three measured epochs (the row is the
    median one), so epoch boundaries (workers kept warm; for hpmodel the warm start, which
    prepares an epoch's first batches during the previous one's tail) are in the number.

    Example::

        case_device(quick=True, workers=2)["runs"]
    """
    cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    device = device or torch.device("cuda" if cuda else "cpu")
    n, batch, width = (8192, 256, 256) if cuda else (1024 if quick else 4096, 64, 16)
    if cuda and not quick:
        n = 32768
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    source = hd.from_tensors((images, labels)).shuffle(n, seed=0)
    # The device stage is the prefetch: its thread pulls batches from the process
    # workers (W x 2 batches in flight) and copies them on a side stream.
    fast = (source.map(_augment, num_parallel_calls=workers, use_processes=True).batch(batch)
            .prefetch_to_device(device, buffer_size=4).with_options(warm_start=True))
    loader = DataLoader(_AugmentedImages(images, labels), batch_size=batch, shuffle=True,
                        num_workers=workers, pin_memory=cuda, persistent_workers=True)
    rows = {}
    for name, batches, copy in (("torch DataLoader", loader, True),
                                ("hpmodel parallel map + prefetch to device", fast, False)):
        _train_loop(batches, model, opt, device, copy)  # warm-up epoch (kernels, workers)
        # then MEASURED epochs back to back (each loader's own, so that nothing of one
        # runs during the other's); the row is the median epoch, all are kept
        runs = sorted((_train_loop(batches, model, opt, device, copy) for _ in range(MEASURED)),
                      key=lambda r: r["input_bound_fraction"])
        rows[name] = {**runs[len(runs) // 2],
                      "epochs_input_bound": [round(r["input_bound_fraction"], 5) for r in runs]}
    stats = fast.stats()
    fast.close()  # the prepared epoch 2 is not used
    name = torch.cuda.get_device_name(device) if cuda else "cpu (shares cores with the loaders)"
    return {"images": n, "batch": batch, "workers": workers, "device": name,
            "runs": rows, "hpmodel_stats": stats}
