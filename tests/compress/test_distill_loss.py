"""The distillation loss against hand-computed values, and the frozen teacher."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpmodel.compress.distill import (DistillationLoss, Ensemble, distill, distillation_loss,
                                      soft_targets)
from hpmodel.kernel.errors import HpmodelError


def test_loss_equals_hand_computed_value_with_t_squared():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 3.0, 0.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.75
    # By hand, with plain floats: softmax at T, KL(p || q), CE at T = 1.
    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]
    p = softmax([1.0 / T, 3.0 / T, 0.0 / T])
    q = softmax([2.0 / T, 0.0 / T, -1.0 / T])
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    ce = -math.log(softmax([2.0, 0.0, -1.0])[0])
    expected = (1 - alpha) * ce + alpha * T * T * kl
    got = distillation_loss(student, y, F.softmax(teacher / T, -1), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # The T² factor is there: without it the value would differ by (T² − 1)·α·KL.
    assert abs(got.item() - ((1 - alpha) * ce + alpha * kl)) > 0.1


def test_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(16, 10), torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    got = distillation_loss(student, y, F.softmax(teacher / 4, -1), temperature=4, alpha=0.0)
    assert torch.equal(got, F.cross_entropy(student, y))
    loss_fn = DistillationLoss(temperature=3, alpha=0.0)
    assert torch.equal(loss_fn(student, y, (student, y, F.softmax(teacher, -1))),
                       F.cross_entropy(student, y))


def test_identical_student_and_teacher_leave_only_the_hard_term():
    logits = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    got = distillation_loss(logits, y, F.softmax(logits / 3, -1), temperature=3, alpha=0.5)
    assert got.item() == pytest.approx(0.5 * F.cross_entropy(logits, y).item(), abs=1e-5)


def test_multi_teacher_targets_are_the_weighted_average():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(10, 4)
    got = soft_targets([a, b], x, temperature=2, weights=[3, 1])
    with torch.no_grad():
        expected = 0.75 * F.softmax(a(x) / 2, -1) + 0.25 * F.softmax(b(x) / 2, -1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(10), atol=1e-6)
    with pytest.raises(HpmodelError, match="one per teacher"):
        soft_targets([a, b], x, temperature=2, weights=[1])


def test_on_the_fly_teacher_equals_cached_targets():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), torch.randn(6, 3)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    on_the_fly = DistillationLoss(4, 0.9, teachers=[teacher])(student, y, (x, y))
    cached = DistillationLoss(4, 0.9)(student, y, (x, y, soft_targets([teacher], x, 4)))
    assert torch.allclose(on_the_fly, cached, atol=1e-6)
    # Without a batch (evaluation) the loss is plain cross-entropy.
    assert torch.equal(DistillationLoss(4, 0.9)(student, y), F.cross_entropy(student, y))


@pytest.mark.parametrize("cache_teacher", [True, False])
def test_teacher_gets_no_gradient_and_does_not_change(cache_teacher):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    student_before = student[1].weight.clone()
    distill([teacher], student, (x, y), temperature=2, alpha=0.9, epochs=2,
            cache_teacher=cache_teacher)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student[1].weight, student_before)  # the student did learn


def test_ensemble_averages_probabilities():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = (F.softmax(a(x), -1) + F.softmax(b(x), -1)) / 2
        assert torch.allclose(Ensemble([a, b])(x).exp(), expected, atol=1e-6)


def test_bad_settings_name_the_key():
    with pytest.raises(HpmodelError, match="distill.alpha"):
        DistillationLoss(temperature=2, alpha=1.5)
    with pytest.raises(HpmodelError, match="distill.temperature"):
        DistillationLoss(temperature=0, alpha=0.5)
