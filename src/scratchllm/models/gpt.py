"""GPT: a decoder-only Transformer (Radford et al. 2018, 2019).

ids -> token embedding + position embedding -> n_layer × [x + attn(ln_1(x)),
x + mlp(ln_2(x))] -> ln_f -> logits over the vocabulary. Parameter names
follow GPT-2 (``transformer.h.0.attn.c_attn.weight`` …) so that loading
GPT-2 weights is a rename table, not code. Shapes: B batch, T time,
C = n_embd, H = n_head, D = C / H, V = vocab_size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import functional as F
from ..backend import DEFAULT_DTYPE, xp
from ..errors import ScratchError
from ..nn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter, init_enabled,
                  sinusoidal_encoding)
from ..tensor import Tensor, record
from .base import ATTN_PARTS, DROP_PARTS, LanguageModel


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    positional: str = "learned"  # or "sinusoidal" (fixed, no parameters)
    tie_weights: bool = True  # output layer shares the token embedding
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ScratchError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.positional not in ("learned", "sinusoidal"):
            raise ScratchError(f"positional must be 'learned' or 'sinusoidal', not {self.positional!r}")


class CausalSelfAttention(Module):
    def __init__(self, cfg: GPTConfig, rng):
        self.n_head = cfg.n_head
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias, rng=rng)  # packed q, k, v
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias, rng=rng)
        self.resid_dropout = Dropout(cfg.dropout, rng=rng)

    def forward(self, x, cache=None):
        qkv = self.c_attn(x)  # (B, T, 3C)
        if cache is None:
            y = F.self_attention(qkv, self.n_head, causal=True)  # (B, T, C)
        else:
            y = cache.attend(qkv)  # (B, T, C), keys/values of earlier tokens from the cache
        return self.resid_dropout(self.c_proj(record("y", y)))


class MLP(Module):
    def __init__(self, cfg: GPTConfig, rng):
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias, rng=rng)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias, rng=rng)
        self.dropout = Dropout(cfg.dropout, rng=rng)

    def forward(self, x):
        h = record("gelu", F.gelu(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(Module):
    def __init__(self, cfg: GPTConfig, rng):
        self.ln_1 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, rng)
        self.ln_2 = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg, rng)

    def forward(self, x, cache=None):
        x = record("resid_1", x + self.attn(self.ln_1(x), cache))  # pre-norm residual
        return x + self.mlp(self.ln_2(x))


# recorded path -> public trace name (see scratchllm.explain.trace for what each holds)
_TRACE_NAMES = (
    (rf"transformer\.drop\.{DROP_PARTS}", r"drop.\1"),
    (rf"transformer\.h\.(\d+)\.attn\.resid_dropout\.{DROP_PARTS}", r"h.\1.attn.drop.\2"),
    (rf"transformer\.h\.(\d+)\.mlp\.dropout\.{DROP_PARTS}", r"h.\1.mlp.drop.\2"),
    (r"transformer\.wte", "tok_emb"),
    (r"(pos_emb|emb|logits)", r"\1"),
    (r"transformer\.h\.(\d+)\.(ln_1|resid_1|ln_2)", r"h.\1.\2"),
    (rf"transformer\.h\.(\d+)\.attn\.{ATTN_PARTS}", r"h.\1.attn.\2"),
    (r"transformer\.h\.(\d+)\.attn", r"h.\1.attn.out"),
    (r"transformer\.h\.(\d+)\.mlp\.c_fc", r"h.\1.mlp.fc"),
    (r"transformer\.h\.(\d+)\.mlp\.gelu", r"h.\1.mlp.gelu"),
    (r"transformer\.h\.(\d+)\.mlp", r"h.\1.mlp.out"),
    (r"transformer\.h\.(\d+)", r"h.\1.resid_2"),
    (r"transformer\.ln_f", "ln_f"),
)


class GPT(LanguageModel):
    kind = "gpt"
    trace_names = _TRACE_NAMES

    def __init__(self, config: GPTConfig, rng=None, seed: int = 0):
        self.config = cfg = config
        rng = rng if rng is not None else xp.random.default_rng(seed)
        self.transformer = Module()
        self.transformer.wte = Embedding(cfg.vocab_size, cfg.n_embd, rng=rng)
        if cfg.positional == "learned":
            self.transformer.wpe = Embedding(cfg.block_size, cfg.n_embd, rng=rng)
        self.transformer.drop = Dropout(cfg.dropout, rng=rng)
        self.transformer.h = ModuleList(Block(cfg, rng) for _ in range(cfg.n_layer))
        self.transformer.ln_f = LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False, rng=rng)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one Parameter, two uses
        self._pe = sinusoidal_encoding(cfg.block_size, cfg.n_embd) if cfg.positional == "sinusoidal" else None
        self._init_weights(rng)

    def _init_weights(self, rng):
        """GPT-2's init: N(0, 0.02) weights, zero biases, residual projections
        scaled by 1/√(2·n_layer) so the residual stream's variance does not grow with depth."""
        if not init_enabled():  # the weights are about to be read from a file
            return
        std_resid = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif name.endswith("weight") and ".ln_" not in name and "ln_f" not in name:
                std = std_resid if name.endswith("c_proj.weight") else 0.02
                p.data[...] = (rng.standard_normal(p.shape) * std).astype(p.dtype)

    # ---- forward ----------------------------------------------------------------
    def forward(self, ids, targets=None, cache=None):
        """ids (B, T) ints -> logits (B, T, V); with targets also the mean loss."""
        ids = xp.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim == 1:
            ids = ids[None]
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ScratchError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(ids)  # (B, T, C)
        if self._pe is not None:
            pos = Tensor(self._pe[start:start + T].astype(x.dtype))  # (T, C), fixed
        else:
            pos = self.transformer.wpe(xp.arange(start, start + T))  # (T, C)
        x = record("emb", self.transformer.drop(x + record("pos_emb", pos)))  # (B, T, C), pos broadcast over B
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        logits = record("logits", F.linear(x, self.lm_head.weight))  # (B, T, V)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets)

    # ---- the interface of every language model (models/base.py) -----------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        return self.config.block_size

    @property
    def n_layer(self) -> int:
        return self.config.n_layer

    @property
    def n_head(self) -> int:
        return self.config.n_head

    @property
    def n_embd(self) -> int:
        return self.config.n_embd

    def token_embedding(self) -> Parameter:
        return self.transformer.wte.weight

    def unembedding(self) -> Parameter:
        return self.lm_head.weight

    def final_norm(self, x: Tensor) -> Tensor:
        return self.transformer.ln_f(x)

    def dropout_sites(self) -> dict:
        sites = {"drop": "token + position embeddings, before block 0"}
        for i in range(self.n_layer):
            sites[f"h.{i}.attn.drop"] = f"block {i}'s attention output (after c_proj), before the residual add"
            sites[f"h.{i}.mlp.drop"] = f"block {i}'s MLP output, before the residual add"
        return sites

    # ---- inference --------------------------------------------------------------
    def new_cache(self, batch_size: int) -> "KVCache":
        return KVCache(self.config, batch_size, self.transformer.wte.weight.dtype)

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, **kwargs):
        """Continue ``ids`` (B, T) by ``max_new_tokens`` sampled tokens -> (B, T + n)."""
        from ..generate import generate  # sampling lives in its own layer

        return generate(self, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **kwargs)

    # ---- saving -----------------------------------------------------------------
    def config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def from_config(cls, d: dict) -> "GPT":
        return cls(GPTConfig(**d))


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated for
    the whole block: each new token then costs one row of attention, O(T), not
    the O(T²) of recomputing the prefix."""

    def __init__(self, cfg: GPTConfig, batch_size: int, dtype=DEFAULT_DTYPE):
        D = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, D)
        self.k = xp.zeros(shape, dtype=dtype)
        self.v = xp.zeros(shape, dtype=dtype)
        self.n_head, self.length = cfg.n_head, 0

    def layer(self, i):
        return _LayerCache(self, i)


class _LayerCache:
    def __init__(self, cache, i):
        self.cache, self.i = cache, i
        self.k, self.v = cache.k[i], cache.v[i]  # (B, H, block, D) views of this layer's slots

    def attend(self, qkv: Tensor) -> Tensor:
        """qkv (B, Tn, 3C) of the new tokens -> (B, Tn, C); appends their keys and values.

        Inference only (no graph): plain arrays throughout, since with one new
        token per step the matrices are tiny and Python overhead is the cost."""
        c, H = self.cache, self.cache.n_head
        B, Tn, C3 = qkv.shape
        C = C3 // 3
        D = C // H
        q, k, v = qkv.data.reshape(B, Tn, 3, H, D).transpose(2, 0, 3, 1, 4)  # each (B, H, Tn, D)
        lo, hi = c.length, c.length + Tn
        self.k[:, :, lo:hi] = k
        self.v[:, :, lo:hi] = v
        scale = qkv.dtype.type(1.0 / math.sqrt(D))
        # a single new token is the last position: it may see every cached key, no mask
        a = F._attention_weights(q, self.k[:, :, :hi], scale, Tn > 1, None)  # (B, H, Tn, hi)
        y = xp.empty((B, Tn, H, D), dtype=qkv.dtype)
        xp.matmul(a, self.v[:, :, :hi], out=y.transpose(0, 2, 1, 3))  # straight into (B, Tn, H, D)
        return Tensor(y.reshape(B, Tn, C))  # (B, Tn, C)
