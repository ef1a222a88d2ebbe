"""A GPT in PyTorch with the architecture and parameter names of
``scratchllm.models.GPT``: the reference that tests and benchmarks compare with.

It lives in ``tests/`` (a test and benchmark extra, never imported by the
library). Tests import it as ``from torch_gpt import TorchGPT``; scripts in
``bench/`` first put ``tests/`` on the path::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torch_gpt import TorchGPT

Written top to bottom with plain ``torch`` ops (no ``nn.TransformerBlock``, no
fused attention) so each line can be read against ``models/gpt.py``.
Shapes: B batch, T time, C = n_embd, H = n_head, D = C / H, V = vocab_size.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# Benchmarks set this to use torch's fused scaled_dot_product_attention (the
# fastest eager path); tests keep the explicit lines below.
USE_SDPA = False


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # packed q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        if USE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))  # a token sees only itself and the past
            weights = torch.softmax(scores, dim=-1)
            y = weights @ v  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # pre-norm residual
        return x + self.mlp(self.ln_2(x))


def sinusoidal_table(n_positions, dim):
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(…)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(n_positions, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe.float()


class TorchGPT(nn.Module):
    """``cfg`` is a ``scratchllm.models.gpt.GPTConfig`` (or anything with the same fields)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.positional == "learned":
            self.transformer.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.register_buffer("pe", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.transformer.drop = nn.Dropout(cfg.dropout)
        self.transformer.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.transformer.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids, targets=None, ignore_index=-100):
        B, T = ids.shape
        x = self.transformer.wte(ids)  # (B, T, C)
        if self.config.positional == "learned":
            x = x + self.transformer.wpe(torch.arange(T, device=ids.device))
        else:
            x = x + self.pe[:T].to(x.dtype)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=ignore_index)
        return logits, loss

    # ---- weights shared with a scratchllm GPT --------------------------------
    @classmethod
    def from_scratch(cls, model) -> "TorchGPT":
        """A TorchGPT with a copy of the weights of a scratchllm GPT (same names, same layout)."""
        ref = cls(model.config)
        ref.copy_from(model)
        return ref

    @torch.no_grad()
    def copy_from(self, model):
        ours = dict(model.named_parameters())
        mine = dict(self.named_parameters())
        if ours.keys() != mine.keys():
            raise KeyError(f"parameter names differ: {sorted(ours.keys() ^ mine.keys())}")
        for name, p in mine.items():
            p.copy_(torch.from_numpy(np.asarray(ours[name].data)).to(p.dtype))
        return self
