"""``Trainer(compile_mode=...)``: torch.compile's modes reach torch.compile, a bad mode is
one line, CUDA-graph modes refuse gradient accumulation, and a compiled run with a mode
trains like eager on the CPU (aot_eager: no code generation on the 2-core CPU)."""

import pytest
import torch
import torch._inductor
from torch import nn

import hpmodel as hm
from hpmodel import config
from hpmodel.train.compiling import COMPILE_MODES, check_compile_mode

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = (X.sum(dim=1) > 0).long()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def fit(**options):
    trainer = hm.Trainer(progress=False, seed=0, batch_size=16, **options)
    return trainer.fit(model, lambda p: torch.optim.SGD(p, lr=0.1), (X, Y), epochs=1)


def test_the_modes_are_torch_compiles_and_the_configs():
    assert set(COMPILE_MODES) <= set(torch._inductor.list_mode_options())
    assert config.CHOICES["train.compile_mode"] == COMPILE_MODES


@pytest.mark.parametrize("mode, expected", [("default", {}),
                                            ("max-autotune-no-cudagraphs",
                                             {"mode": "max-autotune-no-cudagraphs"})])
def test_the_mode_reaches_torch_compile_only_when_not_default(monkeypatch, mode, expected):
    calls = []

    def fake_compile(fn, **kwargs):  # records, then runs eagerly
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    fit(compile=True, compile_mode=mode)
    assert calls == [{"backend": "inductor", **expected}]


def test_a_mode_trains_like_eager_on_the_cpu():
    eager = fit()
    compiled = fit(compile="aot_eager", compile_mode="max-autotune-no-cudagraphs")  # torch warns: ignored
    for key, value in eager.state_dict.items():
        assert torch.allclose(compiled.state_dict[key], value, atol=1e-5), key


def test_bad_modes_and_cuda_graphs_with_accumulation_are_one_line():
    with pytest.raises(hm.ConfigError, match="train.compile_mode = 'fast' is unknown: allowed values "
                                             "are default, reduce-overhead, max-autotune, "
                                             "max-autotune-no-cudagraphs"):
        hm.Trainer(compile=True, compile_mode="fast")
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(hm.ConfigError, match=f"'{mode}' replays CUDA graphs.*grad_accum = 2"):
            hm.Trainer(compile=True, compile_mode=mode, grad_accum=2)
    hm.Trainer(compile=True, compile_mode="max-autotune-no-cudagraphs", grad_accum=2)
    hm.Trainer(compile=False, compile_mode="reduce-overhead", grad_accum=2)  # nothing compiles
    check_compile_mode("reduce-overhead", compile=True, grad_accum=1)
