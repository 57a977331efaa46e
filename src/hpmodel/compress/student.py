"""A student GPT made from its teacher, as DistilBERT made its student (Sanh et al. 2019):
fewer blocks, each copied from a chosen teacher block, with the teacher's embeddings and
head. PyTorch does the work (``copy.deepcopy`` of the modules, ``load_state_dict``).

The GPT is an ``nn.Sequential`` ``[Embeddings, Block × depth, LanguageModelHead]``, so a
student is the teacher's embeddings, the chosen blocks and its head, in order; tied
embeddings stay tied. ``layers`` are teacher block indices (0-based): every other one by
default (DistilBERT: 12 → 6), i.e. ``0, 2, 4, ...``.

Example::

    student = student_from_teacher(teacher)            # blocks 0, 2 of a 4-block teacher
    student = student_from_teacher(teacher, [0, 3])    # the first and last blocks
    student.source_layers                               # (0, 3): for hidden-state losses
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from torch import nn

from hpmodel.kernel.errors import ConfigError
from hpmodel.models.gpt import GPT


def every_other(depth: int, keep: int | None = None) -> list[int]:
    """``keep`` teacher block indices spread evenly from block 0 (default: half, rounded up).

    Example::

        every_other(4)       # [0, 2]
        every_other(12, 4)   # [0, 3, 6, 9]
    """
    keep = keep or (depth + 1) // 2
    if not 1 <= keep <= depth:
        raise ConfigError(f"a student of {keep} blocks cannot come from a teacher of {depth}: "
                          f"choose 1 .. {depth} blocks")
    stride = depth / keep
    return [int(i * stride) for i in range(keep)]


def check_layers(layers: Sequence[int], depth: int) -> list[int]:
    """``layers`` as a list of distinct, increasing teacher block indices; one line otherwise."""
    layers = [int(i) for i in layers]
    if not layers or any(not 0 <= i < depth for i in layers) or layers != sorted(set(layers)):
        raise ConfigError(f"distill.student_layers = {layers} must be increasing, distinct teacher "
                          f"block indices in 0 .. {depth - 1} (e.g. {every_other(depth)})")
    return layers


def student_from_teacher(teacher: GPT, layers: Sequence[int] | None = None) -> GPT:
    """A GPT of ``len(layers)`` blocks initialised from the teacher's (see the module doc).

    The teacher is left untouched (the student holds copies); ``student.source_layers``
    records which teacher block each student block came from.

    Example::

        student = student_from_teacher(teacher, layers=[0, 2])
    """
    if not isinstance(teacher, GPT):
        raise ConfigError(f"a student from the teacher's layers needs a GPT teacher, not a "
                          f"{type(teacher).__name__}: set distill.student_init = 'random'")
    layers = check_layers(layers if layers else every_other(teacher.config.depth),
                          teacher.config.depth)
    cfg = dataclasses.replace(teacher.config, depth=len(layers))
    student = GPT(cfg)
    blocks = blocks_of(teacher)
    chosen = [teacher[0], *(blocks[i] for i in layers), teacher[-1]]
    for target, source in zip(student, chosen):
        target.load_state_dict(source.state_dict())  # copies the values
    if cfg.tie_embeddings:  # load_state_dict copied values; the tie is the student's own
        student[-1].out.weight = student[0].token.weight
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    student.source_layers = tuple(layers)
    return student


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a GPT (everything between its embeddings and its head)."""
    return list(model)[1:-1]


__all__ = ["blocks_of", "check_layers", "every_other", "student_from_teacher"]
