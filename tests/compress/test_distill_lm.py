"""GPT distillation pieces: a student from the teacher's layers, the losses, top-k shards."""

import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hpmodel.compress.lm_distill import (LMDistiller, forward_hidden, soft_kl, sparse_kl,
                                         teacher_log_probs, token_mask)
from hpmodel.compress.student import every_other, student_from_teacher
from hpmodel.compress.topk import TopKExamples, TopKSplit, read_manifest, write_topk
from hpmodel.config import DataConfig
from hpmodel.data import write_text_shards
from hpmodel.datasets import load_splits
from hpmodel.kernel.errors import ConfigError, HpmodelError
from hpmodel.models.gpt import GPT, GPTConfig
from hpmodel.train.trainer import Trainer


def tiny(depth=4, width=16, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(seq_len=8, width=width, depth=depth, heads=2, vocab_size=64))


def batch(n=3, t=8, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    labels = torch.randint(0, vocab, (n, t), generator=g)
    labels[0, :2] = -100
    return ids, labels


def test_student_copies_every_other_block_and_keeps_the_tie():
    teacher = tiny()
    student = student_from_teacher(teacher)
    assert student.config.depth == 2 and student.source_layers == (0, 2)
    assert torch.equal(student[2].mlp[0].weight, teacher[3].mlp[0].weight)  # block 1 ← block 2
    assert student[-1].out.weight is student[0].token.weight
    assert student[0].token.weight.data_ptr() != teacher[0].token.weight.data_ptr()  # a copy
    ids, _ = batch()
    _, t_hidden = forward_hidden(teacher, ids)
    _, s_hidden = forward_hidden(student, ids)
    assert torch.allclose(s_hidden[0], t_hidden[0])  # the same first block, the same input
    assert every_other(12, 4) == [0, 3, 6, 9]
    assert student_from_teacher(teacher, [1, 3]).source_layers == (1, 3)
    with pytest.raises(ConfigError, match="increasing"):
        student_from_teacher(teacher, [3, 1])


def test_sparse_kl_with_every_token_is_the_full_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    mask = torch.ones(2, 5)
    log_p = F.log_softmax(t / 2, -1)
    full = soft_kl(s, log_p, 2.0, mask)
    values, indices = log_p.topk(64, -1)
    for rest in ("bucket", "drop"):
        assert torch.allclose(sparse_kl(s, values, indices, 2.0, mask, rest), full, atol=1e-5)
    values, indices = log_p.topk(8, -1)
    assert sparse_kl(s, values, indices, 2.0, mask, "bucket") <= full + 1e-6  # coarse-grained
    # The student equal to the teacher: no divergence, whatever is dropped.
    assert sparse_kl(t, values, indices, 2.0, mask, "drop").abs() < 1e-5


@pytest.mark.parametrize("hidden_loss,width", [("cosine", 16), ("mse", 8)])
def test_distiller_losses_backward_and_eval(hidden_loss, width):
    teacher = tiny()
    student = student_from_teacher(teacher) if width == 16 else tiny(depth=2, width=8, seed=3)
    model = LMDistiller(student, [teacher], temperature=2.0, soft=1.0, hard=0.5, hidden=1.0,
                        hidden_loss=hidden_loss)
    assert not any(p is teacher[0].token.weight for p in model.parameters())  # teacher outside
    assert len(list(model.projections.parameters())) == (0 if width == 16 else 2)
    ids, labels = batch()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and student[1].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    model.eval()
    plain = model(ids, labels=labels).loss
    assert torch.allclose(plain, student(ids, labels=labels).loss)


def test_two_teachers_average_probabilities():
    a, b = tiny(seed=0), tiny(seed=5)
    ids, _ = batch()
    log_p, _ = teacher_log_probs([a, b], ids, 1.0, [0.5, 0.5])
    expected = 0.5 * F.softmax(a(ids), -1) + 0.5 * F.softmax(b(ids), -1)
    assert torch.allclose(log_p.exp(), expected, atol=1e-6)


@pytest.fixture(scope="module")
def text_splits(tmp_path_factory):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [str(stdlib / name) for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py")]
    out = tmp_path_factory.mktemp("text") / "shards"
    write_text_shards(files, str(out), seq_len=8, val_fraction=0.25, seed=0)
    data = DataConfig(name="shards", shards=f"{out}/train-*.shard", val_fraction=0.2,
                      test_shards=f"{out}/val-*.shard")
    return load_splits(data, 0)


def test_topk_shards_align_with_the_data_and_train_offline(text_splits, tmp_path):
    torch.manual_seed(2)
    teacher = GPT(GPTConfig(seq_len=8, width=16, depth=4, heads=2, vocab_size=256))
    manifest = write_topk([teacher], text_splits.train, tmp_path / "topk", k=4, temperature=2.0,
                          records_per_shard=100)
    assert manifest["records"] == len(text_splits.train) and manifest["bytes"] > 0
    assert write_topk([teacher], text_splits.train, tmp_path / "topk", k=4,
                      temperature=2.0) == read_manifest(tmp_path / "topk")  # reused
    examples = TopKExamples(text_splits.train, tmp_path / "topk")
    item = examples[7]
    assert item["teacher_values"].shape == (8, 4) and item["teacher_indices"].dtype == torch.long
    log_p = F.log_softmax(teacher(item["input_ids"][None]) / 2.0, -1)[0]
    assert torch.allclose(item["teacher_values"], log_p.topk(4, -1).values, atol=1e-2)  # float16
    student = student_from_teacher(teacher)
    trainer = Trainer(task="causal-lm", batch_size=4, max_steps=3, progress=False)
    result = trainer.fit(LMDistiller(student, temperature=2.0), lambda p: torch.optim.AdamW(p),
                         TopKSplit(text_splits.train, tmp_path / "topk"))
    assert result.summary["steps"] == 3
    with pytest.raises(HpmodelError, match="no teachers"):
        LMDistiller(student)(*batch(vocab=256))
    # A top-k set written for other data is refused by position, not silently misread.
    other = load_splits(DataConfig(name="shards", shards=text_splits.train.subset.table.urls[0],
                                   val_fraction=0.5, test_shards=text_splits.test.subset.table.urls[0]), 0)
    with pytest.raises(HpmodelError, match="top-k"):
        TopKExamples(other.train, tmp_path / "topk")[0]


def test_online_distillation_through_the_trainer(text_splits):
    teacher = GPT(GPTConfig(seq_len=8, width=16, depth=2, heads=2, vocab_size=256))
    model = LMDistiller(student_from_teacher(teacher, [1]), [teacher], hidden=1.0)
    trainer = Trainer(task="causal-lm", batch_size=4, max_steps=2, progress=False)
    result = trainer.fit(model, lambda p: torch.optim.AdamW(p), text_splits.train,
                         val_data=text_splits.val)
    assert result.summary["steps"] == 2 and "val_bits_per_byte" in result.history[-1]
    assert token_mask(torch.tensor([[-100, 3]])).tolist() == [[0.0, 1.0]]
