"""Diagnose the reference model under DDP: step time of plain DDP (foreach or fused AdamW,
with or without gradient_as_bucket_view), of the optimizer overlapped with the all-reduce
(hpmodel.strategies.overlap, 25 or 100 MB buckets), and of no DDP at all (one process);
profiler traces of the overlap variants. Writes ddp-wsN.json and traces to OUTDIR.

    python3 -m torch.distributed.run --nproc-per-node 2 scripts/diagnose_ddp_overlap.py OUTDIR
    python3 -m torch.distributed.run --nproc-per-node 1 scripts/diagnose_ddp_overlap.py OUTDIR

Each variant: 10 warm-up steps, then 5 windows of 10 steps; ms_min / ms_med are the fastest and
median window (slowest rank). ``checksum`` (sum of the weights) shows variants with the same
optimizer end with the same weights. Needs CUDA and NCCL.
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, "src")
from hpmodel.bench.scaling import GPU_MODELS
from hpmodel.bench._scaling_workers import build_model, make_batch
from hpmodel.strategies.overlap import OptimizerOverlap, overlap_hook

W = GPU_MODELS["reference"]
OUT = sys.argv[1]


def variant(name, device, rank):
    torch.manual_seed(0)
    with device:
        model = build_model(W)
    fused = "fused" in name
    bv = "bv" in name or "ov" in name
    cap = 100 if "cap100" in name else 25
    if name.startswith("single"):
        ddp = model
    else:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index], bucket_cap_mb=cap,
                                                  gradient_as_bucket_view=bv,
                                                  static_graph="static" in name)
    opt = torch.optim.AdamW(ddp.parameters(), lr=W.lr, fused=fused or None)
    overlapped = False
    if name.startswith("ov"):
        ddp.register_comm_hook(OptimizerOverlap(opt), overlap_hook)
        overlapped = True
    x, y = make_batch(W, device, rank)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        if not overlapped:
            opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / 10)
    t = torch.tensor([min(times), sorted(times)[2]], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    checksum = sum(float(p.double().sum()) for p in ddp.parameters())
    prof = None
    if name in PROFILE and rank == 0:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
    elif name in PROFILE:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    if prof is not None:
        ws = dist.get_world_size()
        prof.export_chrome_trace(f"{OUT}/trace-ddp-{name}-ws{ws}.json")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=18), flush=True)
    del ddp, opt, model
    torch.cuda.empty_cache()
    return {"variant": name, "ms_min": 1e3 * t[0].item(), "ms_med": 1e3 * t[1].item(),
            "ex_s": W.batch_per_device * dist.get_world_size() / t[1].item(), "checksum": checksum}


VARIANTS = ["plain", "plain-fused", "plain-fused-bv", "ov", "ov-fused", "ov-fused-cap100",
            "ov-cap100", "single", "single-fused", "plain"]
PROFILE = {"ov-fused", "ov"}


def main():
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    rank = dist.get_rank()
    rows = []
    for name in VARIANTS:
        if name.startswith("single") and dist.get_world_size() > 1:
            continue
        try:
            row = variant(name, device, rank)
        except Exception as e:  # keep going
            row = {"variant": name, "error": repr(e)[:300]}
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    if rank == 0:
        with open(f"{OUT}/ddp-ws{dist.get_world_size()}.json", "w") as f:
            json.dump(rows, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
