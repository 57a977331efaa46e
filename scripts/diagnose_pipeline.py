"""Diagnose the 2-stage pipeline of ``hpmodel bench pipeline`` (16 × Linear(4096) + GELU):
each stage's forward+backward alone at batch 8,192 and at micro-batches of 1,024 and 512,
its optimizer step, the pageable host-to-device copy of a batch, pipeline steps with the batch
on the host and on the device, and profiler traces of 1F1B at M = 8 and GPipe at M = 1.

    PYTHONPATH=src:scripts python3 scripts/diagnose_pipeline.py OUTDIR        # 2 GPUs
    EXP_DEV=cpu PYTHONPATH=src:scripts python3 scripts/diagnose_pipeline.py OUTDIR  # tiny, CPU
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

CPU = os.environ.get("EXP_DEV") == "cpu"
W = 64 if CPU else 4096
BATCH = 64 if CPU else 8192


def sync():
    if not CPU:
        torch.cuda.synchronize()


def timed(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def worker(options, strategy):
    from hpmodel.bench.pipeline_parallel import mlp_blocks  # noqa: E402

    out = options["out"]
    torch.backends.cuda.matmul.allow_tf32 = True
    model, optimizer = strategy.setup(mlp_blocks(W, 16), lambda p: torch.optim.SGD(p, lr=1e-4))
    rank = strategy.rank
    dev = strategy.device
    gen = torch.Generator().manual_seed(0)
    B = BATCH
    x_cpu = torch.randn(B, W, generator=gen)
    y_cpu = torch.randint(0, 10, (B,), generator=gen)
    x_gpu, y_gpu = x_cpu.to(dev), y_cpu.to(dev)
    rows = []
    # 1. stage alone: fwd+bwd of this stage's blocks for a full batch and a micro-batch
    mod = model.module
    for mb in (B, B // 8, B // 16):
        inp = torch.randn(mb, W, device=dev, requires_grad=rank > 0)

        def fb():
            out_ = mod(inp)
            if rank == 1:
                nn.functional.cross_entropy(out_, y_gpu[:mb]).backward()
            else:
                out_.backward(torch.ones_like(out_))

        rows.append({"what": "stage-alone fwd+bwd", "rank": rank, "batch": mb, "ms": timed(fb, 10)})
        optimizer.zero_grad(set_to_none=True)
    fb()
    rows.append({"what": "optimizer step", "rank": rank, "ms": timed(optimizer.step, 5)})
    optimizer.zero_grad(set_to_none=True)
    rows.append({"what": "h2d copy pageable x", "rank": rank, "ms": timed(lambda: x_cpu.to(dev), 5)})
    # 2. pipeline steps
    for where, (x, y) in (("cpu", (x_cpu, y_cpu)), ("gpu", (x_gpu, y_gpu))):
        for schedule in ("gpipe", "1f1b"):
            for m in (1, 2, 4, 8, 16):
                strategy.set_schedule(schedule, m)

                def step():
                    strategy.run_micro_batches(model, [(x, y)], nn.functional.cross_entropy)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                step()
                dist.barrier()
                ms = timed(step, 8)
                t = torch.tensor([ms], device=dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                rows.append({"what": "pipeline step", "data": where, "schedule": schedule, "M": m,
                             "ms": t.item()})
                if rank == 0:
                    print(rows[-1], flush=True)
    # 3. profile 1f1b M=8 (gpu data) and gpipe M=1
    from torch.profiler import ProfilerActivity, profile
    for schedule, m in (("1f1b", 8), ("gpipe", 1)):
        strategy.set_schedule(schedule, m)

        def step():
            strategy.run_micro_batches(model, [(x_gpu, y_gpu)], nn.functional.cross_entropy)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(); step()
        sync()
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU] + ([] if CPU else [ProfilerActivity.CUDA])) as prof:
            for _ in range(2):
                step()
            sync()
        prof.export_chrome_trace(f"{out}/trace-pipe-{schedule}-M{m}-rank{rank}.json")
        table = prof.key_averages().table(sort_by="self_cpu_time_total" if CPU else "self_device_time_total", row_limit=15)
        with open(f"{out}/pipe-table-{schedule}-M{m}-rank{rank}.txt", "w") as f:
            f.write(table)
        if rank == 0:
            print(table, flush=True)
    everything = [None] * dist.get_world_size()
    dist.all_gather_object(everything, rows)
    return everything


def main():
    from hpmodel.strategies.pipeline_parallel import Pipeline

    out = sys.argv[1]
    strategy = Pipeline(devices=2, stages=2, device="cpu" if CPU else "cuda", split_points=[9])
    per_rank = strategy.launch(worker, {"out": out}, strategy)
    with open(f"{out}/pipe.json", "w") as f:
        json.dump(per_rank, f, indent=1, default=str)
    for rank_rows in per_rank:
        for row in rank_rows:
            if row["what"] != "pipeline step":
                print(row)


if __name__ == "__main__":
    main()
