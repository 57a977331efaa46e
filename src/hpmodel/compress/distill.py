"""Knowledge distillation: a frozen teacher (or several) teaches a student through softened
probabilities (Hinton, Vinyals & Dean 2015).

The loss, with ``α`` weighting the *soft* term::

    L = (1 − α) · CE(student, y) + α · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

(Keras's Distiller example and torchdistill's ``KDLoss`` call the weight of the *hard* term
``alpha``: their ``alpha`` is our ``1 − α``; torchdistill's ``beta`` is our ``α``.) The T²
keeps the soft term's gradients at the same scale as T changes.

PyTorch does the work (``F.kl_div``, ``F.cross_entropy``); the :class:`~hpmodel.Trainer`
runs the loop under any strategy. The teacher never enters the strategy: it lives inside
the loss (moved to the batch's device on first use, ``requires_grad`` off, eval mode,
``torch.no_grad``), or its soft targets are computed once and travel with the batch as a
third tensor ``(x, y, soft_targets)`` (``cache_teacher=True``), which every strategy shards
like the labels. So DDP never sees teacher parameters and FSDP shards only the student.

Example::

    teacher = load_teacher("runs/teacher")
    result = distill([teacher], student_factory, (x, y), temperature=4, alpha=0.9, epochs=5)
    result.model  # the trained student
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpmodel.kernel.errors import HpmodelError
from hpmodel.config import load_run_config
from hpmodel.datasets import load_splits
from hpmodel.models import build_model
from hpmodel.kernel.files import load_weights
from hpmodel.train.trainer import Trainer


def distillation_loss(student_logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Hinton's loss from student logits (B, C), labels (B,) and teacher probabilities at T (B, C).

    Example::

        loss = distillation_loss(s, y, F.softmax(t / 4, -1), temperature=4, alpha=0.9)
    """
    student_logits = student_logits.float()
    hard = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return hard
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    # kl_div(log q, p) = Σ p (log p − log q); "batchmean" divides by B as the maths does.
    soft = F.kl_div(log_q, targets.float(), reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher never trains.

    Example::

        teacher = freeze(teacher)
    """
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Teacher weights normalised to sum 1 (equal when None)."""
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise HpmodelError(f"teacher weights {list(weights)} must be {count} non-negative numbers "
                           "with a positive sum, one per teacher")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


@torch.no_grad()
def soft_targets(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float,
                 weights: Sequence[float] | None = None, batch_size: int = 512) -> torch.Tensor:
    """Weighted average of the teachers' softmax(logits / T) over ``x``: (N, C) probabilities.

    Example::

        targets = soft_targets([teacher_a, teacher_b], x_train, temperature=4, weights=[2, 1])
    """
    weights = check_weights(weights, len(teachers))
    device = next(iter(teachers[0].parameters())).device
    chunks = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        probs = sum(w * F.softmax(t.eval()(xb).float() / temperature, dim=-1)
                    for w, t in zip(weights, teachers))
        chunks.append(probs.to(x.device))
    return torch.cat(chunks)


class DistillationLoss:
    """The Trainer's ``loss_fn`` for distillation; it reads the whole batch (``wants_batch``).

    A batch ``(x, y, soft_targets)`` uses the cached targets; a batch ``(x, y)`` asks the
    frozen ``teachers`` on the fly. Without a batch (evaluation) it is plain cross-entropy,
    so validation and test losses stay comparable with a student trained from scratch.

    Example::

        loss_fn = DistillationLoss(temperature=4, alpha=0.9, teachers=[teacher])
        trainer = hm.Trainer(loss_fn=loss_fn)
    """

    wants_batch = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9,
                 teachers: Sequence[nn.Module] = (), weights: Sequence[float] | None = None):
        if temperature <= 0:
            raise HpmodelError(f"distill.temperature = {temperature} must be positive")
        if not 0 <= alpha <= 1:
            raise HpmodelError(f"distill.alpha = {alpha} must be in [0, 1] (it weights the soft term)")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.teachers = nn.ModuleList([freeze(t) for t in teachers])
        self.weights = check_weights(weights, len(teachers)) if teachers else []

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, batch=None) -> torch.Tensor:
        if batch is None:
            return F.cross_entropy(logits.float(), y)
        if len(batch) > 2:
            targets = batch[2]
        elif len(self.teachers):
            targets = self.teacher_targets(batch[0])
        else:
            raise HpmodelError("DistillationLoss got a batch without soft targets and has no "
                               "teachers: pass teachers=[...] or data (x, y, soft_targets)")
        return distillation_loss(logits, y, targets, self.temperature, self.alpha)

    def teacher_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Soft targets for ``x`` from the teachers, which move to ``x``'s device once."""
        if next(self.teachers.parameters()).device != x.device:
            self.teachers.to(x.device)
        with torch.autocast(x.device.type, enabled=False):
            return soft_targets(list(self.teachers), x.float(), self.temperature, self.weights)


class Ensemble(nn.Module):
    """Average the members' probabilities; returns log-probabilities, so argmax and
    cross-entropy work as on logits (log_softmax of log p is log p).

    Example::

        ensemble = Ensemble([student_a, student_b])
        predictions = ensemble(x).argmax(-1)
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(check_weights(weights, len(members))),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(w * F.softmax(m(x).float(), dim=-1) for w, m in zip(self.weights, self.members))
        return torch.log(probs.clamp_min(1e-12))  # (B, C)


def load_teacher(run_dir: str | Path, trust_model_target: bool = False):
    """A frozen model and its RunConfig from a run directory written by ``hpmodel train``;
    a ``model.target`` in its config.toml is imported only with ``trust_model_target``.

    Example::

        teacher, teacher_cfg = load_teacher("runs/teacher")
    """

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HpmodelError(f"teacher '{run_dir}' has no config.toml: give a run directory "
                           "written by 'hpmodel train'")
    cfg = load_run_config(run_dir / "config.toml", trust_model_target)
    splits = load_splits(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    missing, unexpected = model.load_state_dict(load_weights(run_dir / "model.safetensors"),
                                                strict=False)
    if missing or unexpected:
        raise HpmodelError(f"teacher '{run_dir}/model.safetensors' does not fit the model of its "
                           f"config.toml (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return freeze(model), cfg


def distill(teachers: Sequence[nn.Module], student, data, *, temperature: float = 4.0,
            alpha: float = 0.9, weights: Sequence[float] | None = None, cache_teacher: bool = True,
            trainer=None, optimizer: Callable | None = None, epochs: int = 1, val_data=None):
    """Train ``student`` (a module or a factory) from ``teachers``; returns the Trainer's FitResult.

    ``data`` is ``(x, y)`` tensors or an ArraySplit. With ``cache_teacher`` the soft targets
    are computed once here and carried as a third tensor; otherwise the teachers run on
    every batch inside the loss (no cache memory, but a teacher forward per step).

    Example::

        result = distill([teacher], lambda: build_model(cfg, (1, 8, 8), 10), (x, y),
                         temperature=4, alpha=0.9, epochs=5)
    """

    if not teachers:
        raise HpmodelError("distill needs at least one teacher")
    x, y = (data.x, data.y) if hasattr(data, "x") else tuple(data[:2])
    teachers = [freeze(t) for t in teachers]
    loss = DistillationLoss(temperature, alpha, [] if cache_teacher else teachers, weights)
    tensors = (x, y, soft_targets(teachers, x, temperature, weights)) if cache_teacher else (x, y)
    trainer = copy.copy(trainer) if trainer is not None else Trainer(progress=False)
    trainer.loss_fn = loss
    optimizer = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-3))
    return trainer.fit(student, optimizer, tensors, epochs=epochs, val_data=val_data)


__all__ = ["DistillationLoss", "Ensemble", "distill", "distillation_loss", "freeze",
           "load_teacher", "soft_targets"]
