"""A GPT-style causal language model (decoder only), in the manner of nanoGPT.

PyTorch does the heavy lifting: ``torch.nn.functional.scaled_dot_product_attention`` with
``is_causal=True`` picks the fused attention kernel (Flash / memory-efficient on CUDA, a
fused CPU kernel otherwise). Pre-LayerNorm blocks, learned positions, GELU MLP of 4 × width,
optionally tied input and output embeddings.

The model is an ``nn.Sequential`` of blocks — ``Embeddings``, ``depth`` × ``Block``,
``LanguageModelHead`` — so activation recomputation can wrap blocks and pipeline stages can
split it like every reference model. Its ``forward`` also takes ``labels`` (HF
convention): with labels it returns a :class:`CausalLMOutput` whose ``.loss`` is the mean
token cross-entropy. Labels are already the next tokens (``labels[:, t]`` is the target of
position ``t``), as the text shards store them; ``-100`` marks a position to ignore.

Example::

    model = GPT(GPTConfig(seq_len=128, width=128, depth=4, heads=4))
    logits = model(input_ids)                          # (B, T) -> (B, T, 256)
    out = model(input_ids, labels=labels)              # out.loss, out.logits
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hpmodel.kernel.errors import ConfigError


@dataclass(kw_only=True)
class GPTConfig:
    """The size of a GPT. ``GPTConfig()`` is tiny; ``gpt_125m()`` is GPT-2 small's shape."""

    vocab_size: int = 256  # bytes: no downloaded vocabulary needed
    seq_len: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0
    tie_embeddings: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "width", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gpt {name} = {getattr(self, name)} must be at least 1")
        if self.width % self.heads:
            raise ConfigError(f"gpt width = {self.width} must be divisible by heads = {self.heads}: "
                              f"e.g. heads = {max(1, self.width // 64)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"gpt dropout = {self.dropout} must be in [0, 1)")


def gpt_125m(vocab_size: int = 8192, seq_len: int = 512, tie_embeddings: bool = True) -> GPTConfig:
    """GPT-2 small's shape: 12 layers × 768, 12 heads: 91.7M parameters at vocab 8,192
    (98.0M untied); 124M at GPT-2's vocabulary of 50,257 and seq_len 1,024.

    Example::

        model = GPT(gpt_125m(vocab_size=50304, seq_len=1024))
    """
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, width=768, depth=12, heads=12,
                     tie_embeddings=tie_embeddings)


@dataclass
class CausalLMOutput:
    """What ``GPT(input_ids, labels=...)`` returns (the HF convention: ``.loss``, ``.logits``)."""

    loss: torch.Tensor
    logits: torch.Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): one attention per head
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)); (B, T, C) → (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width, bias=cfg.bias), nn.GELU(),
                                 nn.Linear(4 * cfg.width, cfg.width, bias=cfg.bias),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Embeddings(nn.Module):
    """Token + learned position embeddings: (B, T) token ids → (B, T, C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.seq_len = cfg.seq_len
        self.token = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.seq_len, cfg.width)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.seq_len:
            raise ConfigError(f"a sequence of {T} tokens is longer than the model's seq_len = "
                              f"{self.seq_len}: build the model with seq_len >= {T}")
        # Shards store bytes as uint8: embedding lookups need integer indices.
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        return self.dropout(self.token(input_ids.long()) + self.position(positions))


class LanguageModelHead(nn.Module):
    """Final LayerNorm and the projection to the vocabulary: (B, T, C) → (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.out = nn.Linear(cfg.width, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln_f(x))


class GPT(nn.Sequential):
    """Embeddings → depth × Block → LanguageModelHead, with an optional loss (see module doc)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(Embeddings(cfg), *(Block(cfg) for _ in range(cfg.depth)),
                         LanguageModelHead(cfg))
        self.config = cfg
        self.apply(_init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.depth) ** 0.5)
        if cfg.tie_embeddings:  # the same matrix reads tokens in and scores them out
            self[-1].out.weight = self[0].token.weight

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        x = input_ids
        for block in self:
            x = block(x)
        logits = x  # (B, T, V)
        if labels is None:
            return logits
        return CausalLMOutput(loss=causal_lm_loss(logits, labels), logits=logits)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) next-token labels (-100: ignored).

    Example::

        loss = causal_lm_loss(model(x), y)   # also a Trainer loss_fn
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().long(), ignore_index=-100)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def num_parameters(cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of ``GPT(cfg)`` (tied ones once); ``non_embedding`` leaves out the position
    table and any embedding matrix no matmul reads (the input table when untied).

    Example::

        num_parameters(gpt_125m())   # 91,740,672
    """
    d, L, V, T, b = cfg.width, cfg.depth, cfg.vocab_size, cfg.seq_len, int(cfg.bias)
    layer_norm = d * (1 + b)
    block = 2 * layer_norm + (3 * d * d + 3 * d * b) + (d * d + d * b) \
        + (4 * d * d + 4 * d * b) + (4 * d * d + d * b)
    total = V * d + T * d + L * block + layer_norm + (0 if cfg.tie_embeddings else V * d)
    if non_embedding:
        total -= T * d + (V * d if not cfg.tie_embeddings else 0)
    return total


def flops_per_token(cfg: GPTConfig) -> int:
    """Training FLOPs per token (forward + backward), as in PaLM / nanoGPT's MFU:
    6·N (N = matmul parameters, the output projection included) + 12·L·T·d (attention).

    Example::

        mfu = flops_per_token(cfg) * tokens_per_second / 989e12   # H200 bf16 dense peak
    """
    return 6 * num_parameters(cfg, non_embedding=True) + 12 * cfg.depth * cfg.seq_len * cfg.width


def gpt(config, input_shape: tuple[int, ...], num_classes: int) -> GPT:
    """Build a GPT from a ModelConfig: width, depth, heads, dropout; ``options`` may set
    seq_len (default: the input length), vocab_size (default: ``num_classes`` or 256),
    tie_embeddings and bias.

    Example::

        gpt(ModelConfig(name="gpt", width=128, depth=4, heads=4), (128,), 256)
    """
    options = dict(config.options)
    unknown = set(options) - {"seq_len", "vocab_size", "tie_embeddings", "bias"}
    if unknown:
        raise ConfigError(f"model.options {sorted(unknown)} are unknown for model 'gpt': use "
                          "seq_len, vocab_size, tie_embeddings or bias")
    seq_len = options.pop("seq_len", input_shape[0] if input_shape else 128)
    vocab_size = options.pop("vocab_size", num_classes if num_classes and num_classes > 1 else 256)
    return GPT(GPTConfig(vocab_size=int(vocab_size), seq_len=int(seq_len), width=config.width,
                         depth=config.depth, heads=config.heads, dropout=config.dropout,
                         **options))
