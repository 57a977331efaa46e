"""Do ~1 ms numpy / torch maps scale with raw threads, and does hpmodel's thread map follow?

    PYTHONPATH=src python3 scripts/probe_threads.py

For the bench's numpy map, an in-place variant and the same ops in torch (1 intra-op
thread): elements/s with 1, 4, 8, 16 plain ``threading.Thread``s (the ceiling any thread
pool can reach), then an hpmodel thread map at 16 workers and AUTOTUNE.
"""
import time, threading, numpy as np, torch, json
torch.set_num_threads(1)
import hpmodel.data as hd
from hpmodel.bench._input_tf import numpy_work
from hpmodel.bench.input import _calibrate

def inplace_work(x, size):
    a = np.resize(x, size); b = np.empty_like(a)
    for _ in range(4):
        np.sin(a, out=b); b *= 1.5; b += 0.25; np.abs(b, out=b); np.sqrt(b, out=a)
    return x + np.float32(a[:1].sum())

def torch_work(x, size):
    a = torch.from_numpy(np.resize(x, size))
    for _ in range(4):
        a = torch.sqrt(torch.abs(torch.sin(a) * 1.5 + 0.25))
    return x + np.float32(float(a[0]))

out = {}
for name, fn in (("numpy (bench)", numpy_work), ("numpy in-place", inplace_work), ("torch ops", torch_work)):
    size = _calibrate(lambda s: fn(np.zeros(64, np.float32), s), 16384)
    per = {}
    for threads in (1, 4, 8, 16):
        n_each = 200
        def work():
            z = np.zeros(64, np.float32)
            for _ in range(n_each): fn(z, size)
        ts = [threading.Thread(target=work) for _ in range(threads)]
        t0 = time.perf_counter(); [t.start() for t in ts]; [t.join() for t in ts]
        per[threads] = round(threads * n_each / (time.perf_counter() - t0))
    out[name] = {"size": size, "elements_per_second_by_threads": per}
    x, y = torch.randn(2048, 64), torch.arange(2048)
    f = lambda e, fn=fn, size=size: (torch.from_numpy(fn(e[0].numpy(), size)), e[1])
    for label, calls in (("pipeline threads 16", 16), ("pipeline threads AUTOTUNE", hd.AUTOTUNE)):
        pipe = hd.from_tensors((x, y)).map(f, num_parallel_calls=calls).batch(32).prefetch(hd.AUTOTUNE)
        t0 = time.perf_counter(); sum(len(b[1]) for b in pipe); rate = 2048 / (time.perf_counter() - t0)
        out[name][label] = round(rate)
    print(name, json.dumps(out[name]), flush=True)
