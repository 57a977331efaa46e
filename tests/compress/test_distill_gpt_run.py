"""``hpmodel distill`` on a GPT: a tiny teacher, half-depth students from its blocks, offline
top-k and full-logit distillation, per-seed results, the saved model's metrics, resume."""

import json
from pathlib import Path

import pytest

from conftest import gpt_toml, run_cli, stdlib_text_shards
from hpmodel.config import load_config
from hpmodel.kernel.errors import ConfigError
from hpmodel.runs.distill import distill_from_config, load_distill_config
from hpmodel.runs.train import evaluate_run, train_from_config

def gpt_run_toml(root: Path, depth: int, steps: int) -> str:
    return gpt_toml(root / "shards", width=16, depth=depth, seq_len=8, batch_size=8, lr=0.01,
                    max_steps=steps, log_every=2, drop_remainder=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    stdlib_text_shards(root / "shards", 4, seq_len=8, val_fraction=0.25)
    (root / "teacher.toml").write_text(gpt_run_toml(root, depth=2, steps=6))
    train_from_config(load_config(root / "teacher.toml"), root / "teacher")
    return root


def student_config(root, distill):
    path = root / "student.toml"
    path.write_text(gpt_run_toml(root, depth=1, steps=3) + "[distill]\n" + distill)
    return path


def test_topk_and_full_logit_students_per_seed(teacher, tmp_path):
    config = student_config(teacher, "temperature = 2.0\nalpha = 0.5\nhidden_weight = 1.0\n"
                                     "topk = 4\nseeds = [0, 1]\n")
    cfg, dcfg = load_distill_config(config)
    out = tmp_path / "run"
    summary = distill_from_config(cfg, dcfg, [str(teacher / "teacher")], out)
    written = json.loads((out / "summary.json").read_text())
    assert written["primary"] == "top-4" and written["student_layers"] == [0]
    assert [r["seed"] for r in written["seeds"]] == [0, 1]
    for record in written["seeds"]:
        assert set(record["distilled"]) == {"top-4", "full logits"}
        assert record["scratch"]["bits_per_byte"] > 0 and record["teacher"]["perplexity"] > 1
        assert record["distilled"]["top-4"]["tokens_per_second"] > 0
    assert "top-4_bits_per_byte" in written["mean"] and "top-4_gap_recovered" in written["std"]
    # The top-level figures are the saved model's (the first seed's top-k student).
    assert written["test_bits_per_byte"] == written["seeds"][0]["distilled"]["top-4"]["bits_per_byte"]
    assert evaluate_run(out)["test_bits_per_byte"] == pytest.approx(written["test_bits_per_byte"])
    assert (out / "full-logits" / "model.safetensors").is_file()
    assert (out / "scratch" / "model.safetensors").is_file()
    topk = written["topk"]
    assert topk["bytes"] > 0 and topk["index_dtype"] == "int16" and topk["records"] > 0
    assert written["parameters"]["student"] < written["parameters"]["teacher"]
    report = (out / "report.md").read_text()
    assert "distilled (top-4)" in report and "not the mean" in report
    assert summary["test_bits_per_byte"] == written["test_bits_per_byte"]


def test_resumes_from_backups_and_cli_errors(teacher, tmp_path):
    config = student_config(teacher, "topk = 4\ncompare_full = false\nbaseline = false\n")
    sets = ["--set", f'backup.dir="{tmp_path / "backup"}"', "--set", "backup.every_steps=1"]
    first = run_cli("distill", str(config), "--teacher", str(teacher / "teacher"), "--out",
                    str(tmp_path / "a"), *sets, check=True)
    assert "top-4" in first.stdout or (tmp_path / "a" / "report.md").is_file()
    run_cli("distill", str(config), "--teacher", str(teacher / "teacher"), "--out",
            str(tmp_path / "b"), *sets, check=True)  # resumes at the last step: same student
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("a", "b"))
    assert a["test_bits_per_byte"] == b["test_bits_per_byte"]
    with pytest.raises(ConfigError, match="distill.topk_indices"):
        load_distill_config(config, ['distill.topk_indices="int8"'])


def test_noisy_student_rounds_and_many_on_many(teacher, tmp_path):
    # noisy student: two rounds of a random-init student as deep as the teacher, noised
    config = student_config(teacher, 'mode = "noisy-student"\nstudent_init = "random"\n'
                                     "rounds = 2\ntoken_noise = 0.2\nstochastic_depth = 0.2\n")
    cfg, dcfg = load_distill_config(config, ["model.depth=2", f'backup.dir="{tmp_path / "bk"}"',
                                             "backup.every_steps=1"])
    written = distill_from_config(cfg, dcfg, [str(teacher / "teacher")], tmp_path / "noisy")
    assert not list((tmp_path / "bk").glob("seed-*"))  # the rounds' backups, kept till the end, are gone
    assert list(written["seeds"][0]["distilled"]) == ["noisy round 1", "noisy round 2"]
    assert written["primary"] == "noisy round 2"
    # the saved model is the last round's clean student (no hooks): evaluate reproduces it
    assert evaluate_run(tmp_path / "noisy")["test_bits_per_byte"] == pytest.approx(
        written["test_bits_per_byte"])
    assert written["test_bits_per_byte"] == written["seeds"][0]["distilled"]["noisy round 2"]["bits_per_byte"]
    # many-on-many: one student per teacher
    config = student_config(teacher, 'mode = "many-on-many"\nbaseline = false\n')
    cfg, dcfg = load_distill_config(config)
    both = [str(teacher / "teacher")] * 2
    written = distill_from_config(cfg, dcfg, both, tmp_path / "many")
    assert list(written["seeds"][0]["distilled"]) == ["from teacher 1", "from teacher 2"]
    # what a GPT distillation does not run: one clear line each
    for extra, match in (('mode = "noisy-student"\n', "student_init = 'random'"),
                         ('mode = "many-on-many"\ntopk = 4\n', "distill.topk = 0")):
        cfg, dcfg = load_distill_config(student_config(teacher, extra))
        with pytest.raises(ConfigError, match=match):
            distill_from_config(cfg, dcfg, [str(teacher / "teacher")], tmp_path / "bad")


def test_token_noise_replaces_inputs_only_in_training():
    import torch
    from hpmodel.compress.lm_noisy import add_lm_noise
    from hpmodel.models.gpt import GPT, GPTConfig

    model = add_lm_noise(GPT(GPTConfig(width=16, depth=2, heads=2, seq_len=8, vocab_size=256)),
                         token_noise=0.5, stochastic_depth=0.0)
    seen = []
    model[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    ids = torch.zeros(4, 8, dtype=torch.long)
    model.eval()(ids)
    assert torch.equal(seen[-1], ids)  # eval: clean
    torch.manual_seed(0)
    model.train()(ids)
    changed = (seen[-1] != ids).float().mean().item()
    assert 0.3 < changed < 0.7  # about half the tokens replaced (a few land on 0 again)
