"""Distilling a causal language model: soft targets per token, the LM loss and hidden-state
matching (DistilBERT's recipe: Sanh et al. 2019), online from frozen teachers or offline
from their top-k log-probabilities (:mod:`hpmodel.compress.topk`).

PyTorch does the work (``F.log_softmax``, ``F.kl_div``, ``F.cosine_similarity``); the
:class:`~hpmodel.Trainer` runs the loop under any strategy through :class:`LMDistiller`, a
wrapper model whose ``forward(input_ids, labels, ...)`` returns ``.loss`` — the Trainer's
causal-lm task uses a model's own loss as it is. The loss, over the target tokens::

    L = hard · CE(student, labels) + soft · T² · KL(p_T ‖ q_T) + hidden · Σ_i d(h_i, H_{m(i)}) / n

``p_T`` is the teachers' weighted average of softmax(logits / T) (or the stored top-k, see
:func:`sparse_kl`), ``q_T`` the student's; ``h_i`` is the output of student block i,
``H_{m(i)}`` that of the teacher block it was copied from (``student.source_layers``, else
blocks spread evenly), ``d`` is ``1 − cos`` or the mean squared error, after a learned
linear projection when the widths differ. Hidden states come from the first teacher only.

The teachers are held outside the module tree (a plain list): the optimizer, DDP, FSDP and
``state_dict`` never see them; they move to the batch's device on first use. In eval mode
(validation, test) the wrapper is the bare student with the plain LM loss, so its scores
compare with a student trained from scratch.

Example::

    model = LMDistiller(student_from_teacher(teacher), [teacher], temperature=2, hidden=1.0)
    out = model(input_ids, labels=labels)        # out.loss (the sum above), out.logits
    trainer.fit(model, optimizer, splits.train)  # task = "causal-lm"
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpmodel.compress.distill import check_weights, freeze
from hpmodel.compress.student import blocks_of, every_other
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.models.gpt import CausalLMOutput, causal_lm_loss
from hpmodel.models.tasks import IGNORE_INDEX

HIDDEN_LOSSES = ("cosine", "mse")
TOPK_REST = ("bucket", "drop")


def forward_hidden(model: nn.Module, input_ids: torch.Tensor):
    """``(logits (B, T, V), [output of each block (B, T, C)])`` of a GPT in one pass.

    Example::

        logits, hidden = forward_hidden(teacher, input_ids)
    """
    x = model[0](input_ids)
    hidden = []
    for block in blocks_of(model):
        x = block(x)
        hidden.append(x)
    return model[-1](x), hidden


def teacher_log_probs(teachers: Sequence[nn.Module], input_ids: torch.Tensor, temperature: float,
                      weights: Sequence[float]):
    """``(log p_T (B, T, V), hidden states of the first teacher)``: the weighted average of the
    teachers' probabilities at temperature T, as log-probabilities."""
    log_probs, hidden = [], []
    for index, teacher in enumerate(teachers):
        logits, states = forward_hidden(teacher, input_ids)
        log_probs.append(F.log_softmax(logits.float() / temperature, dim=-1))
        hidden = states if index == 0 else hidden
    if len(log_probs) == 1:
        return log_probs[0], hidden
    stacked = torch.stack(log_probs) + torch.tensor(weights, device=input_ids.device).log().view(
        -1, 1, 1, 1)
    return torch.logsumexp(stacked, dim=0), hidden  # log Σ_j w_j p_j


def token_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) float mask of the tokens that count (labels ≠ -100)."""
    return (labels != IGNORE_INDEX).float()


def soft_kl(student_logits: torch.Tensor, teacher_log_p: torch.Tensor, temperature: float,
            mask: torch.Tensor) -> torch.Tensor:
    """T² · KL(p_T ‖ q_T), a mean over the masked tokens; teacher log p_T (B, T, V).

    Example::

        soft_kl(s, F.log_softmax(t / 2, -1), 2.0, token_mask(labels))
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_token = F.kl_div(log_q, teacher_log_p, reduction="none", log_target=True).sum(-1)
    return temperature ** 2 * (per_token * mask).sum() / mask.sum().clamp_min(1)


def sparse_kl(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
              temperature: float, mask: torch.Tensor, rest: str = "bucket") -> torch.Tensor:
    """T² · KL over the teacher's top-k: ``values`` (B, T, k) are the teacher's log p_T of the
    tokens ``indices`` (B, T, k), stored at this temperature.

    ``rest = "bucket"``: k + 1 categories, the mass outside the top-k as one bucket on both
    sides — the exact KL of the coarse-grained distributions (a lower bound of the full KL).
    ``rest = "drop"``: both distributions renormalised over the top-k alone.

    Example::

        sparse_kl(s, topk_values, topk_indices, 2.0, token_mask(labels), rest="bucket")
    """
    scaled = student_logits.float() / temperature
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, T, 1)
    indices = indices.long()
    log_q = scaled.gather(-1, indices) - log_z  # (B, T, k)
    log_p = values.float()
    if rest == "drop" or indices.shape[-1] >= scaled.shape[-1]:  # (all tokens: no tail)
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        # The student's tail: logsumexp of the logits outside the top-k, exactly.
        outside = scaled.scatter(-1, indices, float("-inf"))
        log_q_rest = torch.logsumexp(outside, dim=-1) - log_z.squeeze(-1)
        p_rest = (1 - log_p.exp().sum(-1)).clamp_min(0)  # the teacher's tail (float16 rounding)
        rest_term = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - log_q_rest),
                                torch.zeros_like(p_rest))
        per_token = (log_p.exp() * (log_p - log_q)).sum(-1) + rest_term
    return temperature ** 2 * (per_token * mask).sum() / mask.sum().clamp_min(1)


def hidden_distance(student_h: torch.Tensor, teacher_h: torch.Tensor, kind: str,
                    mask: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` (cosine) or the mean squared error per token, a mean over masked tokens."""
    if kind == "cosine":
        per_token = 1 - F.cosine_similarity(student_h.float(), teacher_h.float(), dim=-1)
    else:
        per_token = (student_h.float() - teacher_h.float()).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


class LMDistiller(nn.Module):
    """A student GPT and its distillation losses as one model (see the module docstring).

    Batches are dicts ``{"input_ids", "labels"}`` (online: the teachers run on each batch)
    or ``{"input_ids", "labels", "teacher_values", "teacher_indices"}`` read from top-k
    shards (offline: no teacher in memory). ``student`` is the module to save.
    """

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module] = (), *,
                 temperature: float = 2.0, soft: float = 1.0, hard: float = 1.0,
                 hidden: float = 0.0, hidden_loss: str = "cosine",
                 teacher_weights: Sequence[float] | None = None, topk_rest: str = "bucket"):
        super().__init__()
        if temperature <= 0 or min(soft, hard, hidden) < 0 or soft + hard + hidden <= 0:
            raise ConfigError("distill.temperature must be positive and the loss weights "
                              "(alpha, hard_weight, hidden_weight) non-negative, not all zero")
        if hidden_loss not in HIDDEN_LOSSES or topk_rest not in TOPK_REST:
            raise ConfigError(f"distill.hidden_loss must be one of {HIDDEN_LOSSES} and "
                              f"distill.topk_rest one of {TOPK_REST}")
        self.student = student
        self.teachers = [freeze(t) for t in teachers]  # a list: not submodules (module doc)
        self.weights = check_weights(teacher_weights, len(teachers)) if teachers else []
        self.temperature, self.soft, self.hard, self.hidden = temperature, soft, hard, hidden
        self.hidden_loss, self.topk_rest = hidden_loss, topk_rest
        self.layer_map: list[int] = []
        self.projections = nn.ModuleList()
        if hidden and self.teachers:
            self._build_projections()

    def _build_projections(self) -> None:
        teacher = self.teachers[0]
        depth, student_depth = teacher.config.depth, self.student.config.depth
        self.layer_map = list(getattr(self.student, "source_layers", ()) or
                              every_other(depth, student_depth))
        s_width, t_width = self.student.config.width, teacher.config.width
        self.projections = nn.ModuleList(
            nn.Identity() if s_width == t_width else nn.Linear(s_width, t_width, bias=False)
            for _ in self.layer_map)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                teacher_values: torch.Tensor | None = None,
                teacher_indices: torch.Tensor | None = None, **_records):
        if labels is None or not self.training:  # evaluation: the bare student
            return self.student(input_ids) if labels is None else self.student(input_ids, labels)
        logits, hidden = forward_hidden(self.student, input_ids)
        mask = token_mask(labels)
        loss = self.hard * causal_lm_loss(logits, labels) if self.hard else 0.0
        if teacher_values is not None:  # offline: the stored top-k
            if self.soft:
                loss = loss + self.soft * sparse_kl(logits, teacher_values, teacher_indices,
                                                    self.temperature, mask, self.topk_rest)
        elif self.teachers:
            loss = loss + self._online(input_ids, logits, hidden, mask)
        elif self.soft or self.hidden:
            raise HpmodelError("LMDistiller got a batch without teacher outputs and has no "
                               "teachers: pass teachers=[...] or top-k shards")
        return CausalLMOutput(loss=loss, logits=logits)

    def _online(self, input_ids, logits, hidden, mask) -> torch.Tensor:
        if self.teachers[0].config.vocab_size != self.student.config.vocab_size:
            raise HpmodelError("teacher and student have different vocabularies: distill "
                               "between GPTs of the same model.options.vocab_size")
        if next(self.teachers[0].parameters()).device != input_ids.device:
            for teacher in self.teachers:
                teacher.to(input_ids.device)
        with torch.no_grad():
            log_p, teacher_hidden = teacher_log_probs(self.teachers, input_ids, self.temperature,
                                                      self.weights)
        loss = self.soft * soft_kl(logits, log_p, self.temperature, mask) if self.soft else 0.0
        if self.hidden:
            distances = [hidden_distance(project(hidden[i]), teacher_hidden[j], self.hidden_loss,
                                         mask)
                         for i, (j, project) in enumerate(zip(self.layer_map, self.projections))]
            loss = loss + self.hidden * sum(distances) / len(distances)
        return loss


__all__ = ["HIDDEN_LOSSES", "LMDistiller", "TOPK_REST", "forward_hidden", "hidden_distance",
           "soft_kl", "sparse_kl", "teacher_log_probs", "token_mask"]
