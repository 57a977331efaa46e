"""The GPT with dict batches and the causal-lm task: Mirrored (DDP) and Sharded (FSDP2) on
2 Gloo processes, with compiled steps, equal OneDevice; Mirrored on one device works
without launching (a custom loop, one GPU)."""

import gc

import torch

import hpmodel as hm
from hpmodel.models import GPT, GPTConfig
from parity_helpers import relative_difference

TINY = GPTConfig(vocab_size=32, seq_len=16, width=32, depth=2, heads=2)
GLOBAL_BATCH = 16


def gpt():
    torch.manual_seed(0)
    return GPT(TINY)


def sgd(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def tokens():
    ids = torch.randint(0, TINY.vocab_size, (64, TINY.seq_len + 1),
                        generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


def fit(strategy, replicas, **options):
    trainer = hm.Trainer(strategy=strategy, task="causal-lm", batch_size=GLOBAL_BATCH // replicas,
                         progress=False, max_steps=4, **options)
    return trainer.fit(gpt, sgd, tokens(), epochs=1)


def assert_close(result, reference, tolerance=1e-5):
    assert set(result.state_dict) == set(reference.state_dict)
    for key, value in reference.state_dict.items():
        assert relative_difference(value, result.state_dict[key]) <= tolerance, key
    assert abs(result.history[0]["train_loss"] - reference.history[0]["train_loss"]) <= 1e-5


def test_mirrored_and_sharded_compiled_equal_one_device():
    reference = fit(hm.get_strategy("one-device", device="cpu"), 1)
    for name in ("mirrored", "sharded"):
        strategy = hm.get_strategy(name, devices=2, device="cpu")
        assert_close(fit(strategy, 2, compile="aot_eager"), reference)


def test_mirrored_on_one_device_sets_up_in_place():
    strategy = hm.get_strategy("mirrored", devices=1, device="cpu")
    try:
        model, optimizer = strategy.setup(gpt(), sgd)
        batch = tokens()
        loss = model(batch["input_ids"][:4], labels=batch["labels"][:4]).loss
        strategy.backward(loss)
        strategy.optimizer_step(optimizer)
        assert torch.isfinite(loss) and strategy.world_size == 1
    finally:
        # DDP's reducer must go before its process group: freed after it, Gloo's
        # destructor waits forever for the reducer's work.
        model = optimizer = None
        gc.collect()
        strategy.teardown()
