"""Overlap the optimizer step with gradient communication (a DDP communication hook).

Plain DDP all-reduces gradient buckets during the backward pass, but the optimizer only
starts after the *last* bucket has arrived, so the tail of the communication and the whole
optimizer step sit on the critical path. This hook steps the optimizer for each bucket's
parameters as soon as that bucket's all-reduce completes, so the update of the late layers
runs while the early layers' gradients are still being computed and reduced.

On CUDA the step of every bucket is queued, by a helper thread, on one optimizer stream
that waits only for that bucket's all-reduce; neither the backward pass's thread nor the
compute stream waits for it until the backward pass ends (PyTorch's own
``_apply_optim_in_backward_hook`` uses the same streams, but steps on the backward
thread). On Gloo (CPU) the step runs in the all-reduce future's callback.

``torch.distributed`` does the heavy lifting (``register_comm_hook``, async all-reduce,
futures, streams); the torch optimizer is reused unchanged (its state, LR schedule and
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

import queue
import threading

import torch
import torch.distributed as dist

from hpmodel.kernel.errors import HpmodelError


class OptimizerOverlap:
    """State of :func:`overlap_hook`: the optimizer to step, bucket by bucket.

    On CUDA a helper thread queues the steps, so the Python cost of ``optimizer.step()``
    does not hold back the thread that queues the backward pass (with ~13 buckets it did,
    and the GPU ran dry between layers).

    Example::

        ddp.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, process_group=None):
        self.optimizer = optimizer
        self.process_group = process_group
        # Gloo completes futures on its own threads, possibly two at once: one step at a time.
        self.lock = threading.Lock()
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._join_queued = False
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._outstanding = 0
        self._idle = threading.Condition()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

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

    def stream(self, device: torch.device) -> torch.cuda.Stream:
        """The optimizer stream of ``device`` (one per device, made on first use)."""
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    def submit(self, work, bucket, device: torch.device, divide_by: int) -> None:
        """Have the helper thread queue this bucket's step behind its all-reduce ``work``."""
        self.stream(device)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="hpmodel-optimizer-overlap",
                                            daemon=True)
            self._thread.start()
        with self._idle:
            self._outstanding += 1
        self._pending.put((work, bucket.buffer(), bucket.parameters(), bucket.gradients(), device,
                           divide_by))
        self.join_at_end_of_backward(device)

    def _serve(self) -> None:
        while True:
            work, buffer, parameters, gradients, device, divide_by = self._pending.get()
            try:
                torch.cuda.set_device(device)
                with torch.cuda.stream(self._streams[device]):
                    # Work.wait() makes the current (optimizer) stream wait for the all-reduce;
                    # the CPU goes on queueing (Future.wait() would block it until done).
                    work.wait()
                    if divide_by > 1:
                        buffer.div_(divide_by)
                    self.step_subset(parameters, gradients)
            except BaseException as error:  # raised again at the end of the backward pass
                self._error = error
            finally:
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()

    def join_at_end_of_backward(self, device: torch.device) -> None:
        """Once per backward pass: when it ends, wait until every step is queued, then make
        the compute stream wait for the optimizer stream."""
        if self._join_queued:
            return
        self._join_queued = True
        stream = self.stream(device)

        def join() -> None:
            self._join_queued = False
            with self._idle:
                self._idle.wait_for(lambda: self._outstanding == 0)
            if self._error is not None:
                error, self._error = self._error, None
                raise HpmodelError(f"the overlapped optimizer step failed: {error}") from error
            torch.cuda.current_stream(device).wait_stream(stream)

        torch.autograd.Variable._execution_engine.queue_callback(join)


def overlap_hook(state, bucket):
    """DDP comm hook: average the bucket, then step its parameters when it arrives.

    (No annotations: DDP checks them literally and this module postpones their evaluation.)

    Example::

        ddp.register_comm_hook(OptimizerOverlap(optimizer), overlap_hook)
        loss.backward()   # returns with every bucket averaged and its parameters stepped
    """
    buffer = bucket.buffer()
    group = state.process_group
    if buffer.is_cuda:
        return _step_on_optimizer_stream(state, bucket, buffer, group)
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


def _step_on_optimizer_stream(state: OptimizerOverlap, bucket, buffer: torch.Tensor, group):
    """Queue the bucket's all-reduce here, its optimizer step on the helper thread."""
    if dist.get_backend(group) == "nccl":
        work = dist.all_reduce(buffer, op=dist.ReduceOp.AVG, group=group, async_op=True)
        divide_by = 1
    else:
        work = dist.all_reduce(buffer, group=group, async_op=True)
        divide_by = dist.get_world_size(group)
    state.submit(work, bucket, buffer.device, divide_by)
    done: torch.futures.Future = torch.futures.Future()
    done.set_result(buffer)
    return done
