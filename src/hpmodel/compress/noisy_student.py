"""Noisy student (Xie et al. 2020): a clean teacher labels an unlabeled pool; an equal-or-larger
student learns from labeled + pseudo-labeled data *with noise*; the student becomes the next
teacher, for K rounds.

Noise is attached with forward hooks, so the student's weights keep their names and the
saved file loads into the plain model: input augmentation (random shifts of up to
``shift`` pixels with zero fill, Gaussian noise of ``std``) as a forward pre-hook on the
whole model, and stochastic depth (Huang et al. 2016, drop a whole residual block per
example) as a forward hook on each residual block — ``nn.TransformerEncoderLayer`` and any
module with ``is_residual_block = True``; the MLP and CNN have none. Dropout comes from
``model.dropout`` of the student's config. Every hook is inert in eval mode, so the
teacher that labels the pool is never noised.

Example::

    rounds = noisy_student(teacher, student_factory, (x_lab, y_lab), x_unlabeled, rounds=2,
                           noise=Noise(shift=1, std=0.05), epochs=10)
    rounds[-1].model  # the last student
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpmodel.compress.distill import DistillationLoss, freeze, soft_targets
from hpmodel.kernel.errors import HpmodelError
from hpmodel.train.trainer import Trainer

RESIDUAL_BLOCKS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclass
class Noise:
    """How the student is noised: input shift (pixels), input Gaussian std, stochastic depth."""

    shift: int = 1
    std: float = 0.05
    stochastic_depth: float = 0.1


class InputNoise:
    """Forward pre-hook: in training mode, shift each image by up to ``shift`` pixels (zero fill)
    along its last two dimensions and add Gaussian noise. Images (B, C, H, W) or (B, H, W) are
    shifted; other inputs only get the Gaussian noise.

    Example::

        model.register_forward_pre_hook(InputNoise(shift=1, std=0.05))
    """

    def __init__(self, shift: int = 1, std: float = 0.05):
        self.shift, self.std = int(shift), float(std)

    def __call__(self, module: nn.Module, inputs: tuple):
        if not module.training:
            return None
        x = inputs[0]
        if self.shift and x.dim() >= 3:
            x = random_shift(x, self.shift)
        if self.std:
            x = x + torch.randn_like(x) * self.std
        return (x, *inputs[1:])


def random_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each example moved by its own (dy, dx) in [−shift, shift]², zero fill: (B, ..., H, W)."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), device=x.device)
    rows = offsets[:, :1] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(width, device=x.device)  # (B, W)
    batch_shape = (len(x),) + (1,) * (x.dim() - 3)
    index_rows = rows.view(*batch_shape, height, 1).expand(*x.shape[:-2], height, width + 2 * shift)
    picked = padded.gather(-2, index_rows)
    index_cols = cols.view(*batch_shape, 1, width).expand(*x.shape[:-2], height, width)
    return picked.gather(-1, index_cols)


class StochasticDepth:
    """Forward hook on a residual block ``y = x + f(x)``: in training, keep ``f`` with
    probability 1 − p per example (scaled by 1/(1 − p)), else pass ``x`` through.

    Example::

        layer.register_forward_hook(StochasticDepth(0.1))
    """

    def __init__(self, p: float):
        if not 0 <= p < 1:
            raise HpmodelError(f"stochastic depth probability {p} must be in [0, 1)")
        self.p = float(p)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if not module.training or not self.p:
            return None
        x = inputs[0]
        keep = torch.rand((len(x),) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x + (output - x) * keep.to(output.dtype) / (1 - self.p)


def add_noise(model: nn.Module, noise: Noise) -> nn.Module:
    """Attach the input-noise and stochastic-depth hooks to ``model`` (in place); returns it."""
    model.register_forward_pre_hook(InputNoise(noise.shift, noise.std))
    if noise.stochastic_depth:
        for module in model.modules():
            if isinstance(module, RESIDUAL_BLOCKS) or getattr(module, "is_residual_block", False):
                module.register_forward_hook(StochasticDepth(noise.stochastic_depth))
    return model


class NoisyFactory:
    """A picklable ``() -> nn.Module`` that builds the student with noise hooks attached."""

    def __init__(self, factory: Callable[[], nn.Module], noise: Noise):
        self.factory, self.noise = factory, noise

    def __call__(self) -> nn.Module:
        return add_noise(self.factory(), self.noise)


def pseudo_label(teachers: Sequence[nn.Module], x: torch.Tensor, *, temperature: float = 1.0,
                 hard: bool = False, threshold: float = 0.0):
    """Label ``x`` with the teachers: returns ``(x_kept, y_pseudo, targets)``, keeping only
    examples whose top probability (at T = 1) reaches ``threshold``. ``targets`` are the soft
    probabilities at ``temperature``, or one-hot when ``hard``.

    Example::

        x_kept, y_pseudo, targets = pseudo_label([teacher], x_pool, threshold=0.8)
    """
    confident = soft_targets(teachers, x, 1.0)
    y_pseudo = confident.argmax(-1)
    keep = confident.max(-1).values >= threshold
    if hard:
        targets = F.one_hot(y_pseudo, confident.shape[-1]).float()
    else:
        targets = confident if temperature == 1.0 else soft_targets(teachers, x, temperature)
    return x[keep], y_pseudo[keep], targets[keep]


def noisy_student(teacher: nn.Module, student: Callable[[], nn.Module], labeled, unlabeled_x, *,
                  rounds: int = 2, noise: Noise | None = None, temperature: float = 1.0,
                  alpha: float = 1.0, hard: bool = False, threshold: float = 0.0, trainer=None,
                  optimizer: Callable | None = None, epochs: int = 1, val_data=None) -> list:
    """Run ``rounds`` of noisy-student training; returns each round's FitResult (``.model``
    clean, without hooks, in eval mode; ``.pseudo_labeled`` how many pool examples were kept).

    Labeled examples carry their one-hot label as target, pseudo-labeled ones the teacher's.
    """

    if rounds < 1:
        raise HpmodelError(f"distill.rounds = {rounds} must be at least 1")
    x_lab, y_lab = (labeled.x, labeled.y) if hasattr(labeled, "x") else tuple(labeled[:2])
    num_classes = None
    trainer = copy.copy(trainer) if trainer is not None else Trainer(progress=False)
    trainer.loss_fn = DistillationLoss(temperature, alpha)
    optimizer = optimizer or (lambda params: torch.optim.AdamW(params, lr=3e-3))
    results, current = [], freeze(teacher)
    for _ in range(rounds):
        x_pseudo, y_pseudo, t_pseudo = pseudo_label([current], unlabeled_x, temperature=temperature,
                                                    hard=hard, threshold=threshold)
        num_classes = num_classes or t_pseudo.shape[-1]
        data = (torch.cat([x_lab, x_pseudo]), torch.cat([y_lab, y_pseudo]),
                torch.cat([F.one_hot(y_lab, num_classes).float(), t_pseudo]))
        result = trainer.fit(NoisyFactory(student, noise or Noise()), optimizer, data,
                             epochs=epochs, val_data=val_data)
        clean = student()  # the same weights without hooks: the next clean teacher
        clean.load_state_dict({k: v.cpu() for k, v in result.model.state_dict().items()})
        result.model, result.pseudo_labeled = freeze(clean), len(x_pseudo)
        results.append(result)
        current = result.model
    return results


__all__ = ["InputNoise", "Noise", "NoisyFactory", "StochasticDepth", "add_noise", "noisy_student",
           "pseudo_label", "random_shift"]
