"""A custom loop over strategy.setup / distribute / backward equals Trainer.fit, whether the
pipeline is distributed once or every epoch after set_epoch (on 2 Gloo processes)."""

import torch
from torch import nn

import hpmodel as hm


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def relative_difference(a, b):
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()

EPOCHS, BATCH = 2, 64


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=generator)
    return x, (x[:, :10].argmax(1) + 0)


def pipeline():
    return hm.data.from_tensors(data()).shuffle(256, seed=3).batch(BATCH)


def custom_loop(strategy, distribute_every_epoch: bool):
    model, optimizer = strategy.setup(small_model(), sgd)
    pipe = pipeline()
    local = None if distribute_every_epoch else strategy.distribute(pipe)
    for epoch in range(EPOCHS):
        if distribute_every_epoch:
            pipe.set_epoch(epoch)
            batches = strategy.distribute(pipe)
        else:
            local.set_epoch(epoch)
            batches = local
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            strategy.backward(loss)
            strategy.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)
    return strategy.model_state_dict(model)


def both_loops(strategy):
    return [custom_loop(strategy, every_epoch) for every_epoch in (False, True)]


def test_custom_loop_equals_trainer_fit():
    strategy = hm.get_strategy("mirrored", devices=2, device="cpu")
    once, every_epoch = strategy.launch(both_loops, strategy)
    trainer = hm.Trainer(strategy=hm.get_strategy("mirrored", devices=2, device="cpu"),
                         progress=False, seed=0)
    fitted = trainer.fit(small_model, sgd, pipeline(), epochs=EPOCHS)
    for mine in (once, every_epoch):
        assert set(mine) == set(fitted.state_dict)
        for key, value in fitted.state_dict.items():
            assert relative_difference(value, mine[key]) <= 1e-6, key


def test_shard_keeps_the_epoch_set_before_it():
    pipe = pipeline()
    pipe.set_epoch(1)
    first = next(iter(pipe.shard(2, 0, mode="batch")))[1]
    epoch_one = pipeline()
    epoch_one.set_epoch(1)
    assert torch.equal(first, next(iter(epoch_one))[1][:BATCH // 2])
