"""``torch.compile`` of the training step: which backend and which mode, checked in one line.

``torch.compile`` does the work; this module only validates the choice and passes it on.
The modes are inductor's (``torch._inductor.list_mode_options``): ``max-autotune-no-cudagraphs``
benchmarks Triton and cuBLAS kernels for each matmul while compiling (minutes on a GPT),
``reduce-overhead`` replays the step as CUDA graphs and ``max-autotune`` does both.
Another backend (``"aot_eager"``) ignores the mode (torch warns).

What is known of the CUDA-graph modes in this Trainer (one H200, torch 2.11, one device):
a replay overwrites the previous replay's outputs, so the Trainer keeps none of them past
the next call (the first micro-batch's sums are cloned when more follow, the log window is
a copy); with ``grad_accum = 1`` a tiny GPT trained two epochs (a short last batch, log
windows read one step late) to the eager weights within 1.2e-7 in fp32. With
``grad_accum > 1`` the second micro-batch's replay overwrites the ``.grad`` the first
one's backward installed, and torch raises; :func:`check_compile_mode` refuses it first.
A new batch shape records new graphs (memory); under DDP or FSDP they are untested.

Example::

    step = compile_step(task.step, compile=True, mode="max-autotune-no-cudagraphs")
    loss, sums = step(model, batch)
"""

from __future__ import annotations

from typing import Callable

import torch

from hpmodel.kernel.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs


def check_compile_mode(mode: str, compile: bool | str = True, grad_accum: int = 1) -> None:
    """One :class:`ConfigError` line for a mode torch.compile lacks, or for CUDA graphs
    (:data:`CUDA_GRAPH_MODES`) with gradient accumulation. The mode matters only when
    ``compile`` is set.

    Example::

        check_compile_mode("max-autotune-no-cudagraphs", compile=True, grad_accum=4)  # fine
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode = {mode!r} is unknown: allowed values are "
                          f"{', '.join(COMPILE_MODES)}")
    if compile and mode in CUDA_GRAPH_MODES and grad_accum > 1:
        # The backward graph's outputs become the parameters' .grad, and the next
        # micro-batch's replay overwrites them: torch 2.11 raises "accessing tensor output
        # of CUDAGraphs that has been overwritten" (pytorch/pytorch#169545; older releases
        # accumulated wrongly without a word, #96693).
        raise ConfigError(f"train.compile_mode = '{mode}' replays CUDA graphs, which cannot "
                          f"accumulate gradients (train.grad_accum = {grad_accum}): use "
                          "compile_mode 'max-autotune-no-cudagraphs' or 'default', or grad_accum = 1")


def compile_step(step: Callable, compile: bool | str, mode: str = "default") -> Callable:
    """``step`` under ``torch.compile``: ``compile`` True means inductor, a string names
    another backend; ``mode`` goes to torch.compile unless it is ``"default"`` (so the
    default compiles exactly as before the mode existed)."""
    backend = compile if isinstance(compile, str) else "inductor"
    options = {} if mode == "default" else {"mode": mode}
    return torch.compile(step, backend=backend, **options)


__all__ = ["COMPILE_MODES", "CUDA_GRAPH_MODES", "check_compile_mode", "compile_step"]
