"""Overlap the optimizer step with gradient communication (a DDP communication hook).

Plain DDP all-reduces gradient buckets during the backward pass, but the optimizer only
starts after the *last* bucket has arrived, so the tail of the communication and the whole
optimizer step sit on the critical path. This hook steps the optimizer for each bucket's
parameters as soon as that bucket's all-reduce completes: the CUDA future runs the callback
on a side stream that waits only for that bucket, so the update of the late layers runs
while the early layers' gradients are still being reduced.

``torch.distributed`` does the heavy lifting (``register_comm_hook``, async all-reduce,
futures); the torch optimizer is reused unchanged (its state, LR schedule and
``state_dict`` stay those of the one optimizer the user built), stepping only the bucket's
parameters. This is exact for every optimizer whose update is per parameter (SGD, Adam,
AdamW, ...), so the weights equal those of a plain step.

Example::

    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
    optimizer = torch.optim.AdamW(ddp.parameters())
    ddp.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
    loss.backward()        # gradients averaged *and* parameters updated
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist


class OptimizerOverlap:
    """State of :func:`overlap_hook`: the optimizer to step, bucket by bucket.

    Example::

        ddp.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, process_group=None):
        self.optimizer = optimizer
        self.process_group = process_group
        # Gloo completes futures on its own threads, possibly two at once: one step at a time.
        self.lock = threading.Lock()

    def step_subset(self, parameters, gradients) -> None:
        """``optimizer.step()`` restricted to ``parameters`` (gradients given as bucket views)."""
        wanted = {id(p) for p in parameters}
        for parameter, gradient in zip(parameters, gradients):
            if parameter.grad is None or parameter.grad.data_ptr() != gradient.data_ptr():
                parameter.grad = gradient  # the averaged bucket view, not the local gradient
        with self.lock:
            groups = self.optimizer.param_groups
            saved = [group["params"] for group in groups]
            try:
                for group in groups:
                    group["params"] = [p for p in group["params"] if id(p) in wanted]
                with torch.no_grad():
                    self.optimizer.step()
            finally:
                for group, params in zip(groups, saved):
                    group["params"] = params


def overlap_hook(state, bucket):
    """DDP comm hook: average the bucket, then step its parameters when it arrives.

    (No annotations: DDP checks them literally and this module postpones their evaluation.)

    Example::

        ddp.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
        loss.backward()   # returns with every bucket averaged and its parameters stepped
    """
    buffer = bucket.buffer()
    group = state.process_group
    if dist.get_backend(group) == "nccl":
        work = dist.all_reduce(buffer, op=dist.ReduceOp.AVG, group=group, async_op=True)
    else:  # Gloo has no AVG
        buffer.div_(dist.get_world_size(group))
        work = dist.all_reduce(buffer, group=group, async_op=True)
    parameters, gradients = bucket.parameters(), bucket.gradients()

    def step(future):
        state.step_subset(parameters, gradients)
        return future.value()[0]

    return work.get_future().then(step)
