"""Modules: parameters plus a forward, in the shape PyTorch users know.

A Module finds its parameters and submodules by walking its attributes in
the order they were set, so parameter names are dotted attribute paths
(``transformer.h.0.attn.c_attn.weight``), exactly as in PyTorch.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager

from . import functional as F
from .backend import DEFAULT_DTYPE, xp
from .errors import ScratchError
from .tensor import Tensor, record, tape

# The generator used when a module is built without one. Seed it with
# ``manual_seed`` for reproducible initialisation; pass ``rng=`` to be explicit.
_default_rng = xp.random.default_rng(0)


def manual_seed(seed: int):
    """Reset the default generator (weights init and dropout of modules built without ``rng``)."""
    global _default_rng
    _default_rng = xp.random.default_rng(seed)
    return _default_rng


def default_rng():
    return _default_rng


_thread = threading.local()


@contextmanager
def dropout_generator(rng):
    """Within the block, every Dropout run by this thread draws from ``rng``
    instead of its own generator: threads that share a model each get a
    stream of their own, so their masks do not depend on thread timing."""
    before = getattr(_thread, "dropout_rng", None)
    _thread.dropout_rng = rng
    try:
        yield rng
    finally:
        _thread.dropout_rng = before


@contextmanager
def skip_init():
    """Within the block, modules built by this thread start with zeros instead of
    drawn weights, and models skip their own init: for weights that are read from
    a file right after (drawing SmolLM2's 135M numbers twice was most of its load)."""
    before = getattr(_thread, "skip_init", False)
    _thread.skip_init = True
    try:
        yield
    finally:
        _thread.skip_init = before


def init_enabled() -> bool:
    """False inside :func:`skip_init`: a model's ``_init_weights`` then draws nothing."""
    return not getattr(_thread, "skip_init", False)


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        if tape.active is None:
            return self.forward(*args, **kwargs)
        return tape.active.call(self, args, kwargs)  # a trace: named by this module, its output kept

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # ---- traversal ----------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, value in vars(mod).items():
                if isinstance(value, Parameter) and id(value) not in seen:  # tied weights count once
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # ---- state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Name → array (the live arrays; copy them if you will change the model)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True):
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {own[k].shape}"
                     for k in own if k in state and tuple(state[k].shape) != own[k].shape]
        problems = []
        if bad_shape:
            problems.append("shape mismatch: " + "; ".join(bad_shape))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ScratchError("cannot load state dict (" + " | ".join(problems) + ")")
        for k, p in own.items():
            if k in state:
                xp.copyto(p.data, xp.asarray(state[k]), casting="same_kind")
        return self

    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype):
        """Cast every parameter (e.g. to float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        return self

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in self.named_children())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self) -> str:
        return ""


def _uniform(rng, shape, bound, dtype):
    if not init_enabled():
        return xp.zeros(shape, dtype=dtype)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x Wᵀ + b, W (out, in); PyTorch's default init U(±1/√in) for W and b."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=DEFAULT_DTYPE):
        rng = rng or _default_rng
        bound = 1 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_uniform(rng, (out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform(rng, (out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of vectors, one row per id; init N(0, 1) as PyTorch."""

    def __init__(self, num_embeddings, embedding_dim, rng=None, dtype=DEFAULT_DTYPE):
        rng = rng or _default_rng
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        shape = (num_embeddings, embedding_dim)
        self.weight = Parameter(rng.standard_normal(shape).astype(dtype) if init_enabled() else xp.zeros(shape, dtype))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis, then scale (weight, init 1) and shift (bias, init 0)."""

    def __init__(self, dim, eps=1e-5, bias=True, dtype=DEFAULT_DTYPE):
        self.dim, self.eps = dim, eps
        self.weight = Parameter(xp.ones(dim, dtype=dtype))
        self.bias = Parameter(xp.zeros(dim, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    """Divide each vector by its root mean square, then scale (weight, init 1); no shift."""

    def __init__(self, dim, eps=1e-6, dtype=DEFAULT_DTYPE):
        self.dim, self.eps = dim, eps
        self.weight = Parameter(xp.ones(dim, dtype=dtype))

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p=0.1, rng=None):
        self.p = p
        self.rng = rng

    def forward(self, x):
        if tape.active is not None:  # a trace decides: evaluation mode, or a training pass on its own generator
            return tape.active.dropout(self, x)
        rng = getattr(_thread, "dropout_rng", None) or self.rng or _default_rng
        return F.dropout(x, self.p, self.training, rng)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    def forward(self, x):
        return F.gelu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class ModuleList(Module):
    """Modules named "0", "1", … as in PyTorch (so ``h.0.attn`` names work)."""

    def __init__(self, modules=()):
        self._n = 0
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(self._n), module)
        self._n += 1

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        return getattr(self, str(range(self._n)[i]))

    def __iter__(self):
        return (getattr(self, str(i)) for i in range(self._n))


class Sequential(ModuleList):
    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


_ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "tanh": Tanh, "sigmoid": Sigmoid}


class MLP(Sequential):
    """Linear layers of the given sizes with an activation between them
    (none after the last): MLP([4, 8, 2]) = Linear(4, 8), ReLU, Linear(8, 2)."""

    def __init__(self, sizes, activation="relu", rng=None, dtype=DEFAULT_DTYPE):
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, rng=rng, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, C) -> (B, H, T, D) with D = C / H."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H·D): the heads side by side (concatenated)."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


class MultiHeadAttention(Module):
    """Multi-head attention with PyTorch's parameter layout: ``in_proj_weight``
    (3C, C) packs the query, key and value projections; ``out_proj`` mixes the
    concatenated heads. ``forward(x)`` is self-attention; ``forward(x, memory)``
    is cross-attention (queries from x, keys and values from memory)."""

    def __init__(self, embed_dim, num_heads, bias=True, rng=None, dtype=DEFAULT_DTYPE):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        rng = rng or _default_rng
        self.embed_dim, self.num_heads = embed_dim, num_heads
        # Xavier uniform over the packed (3C, C) matrix, as PyTorch: fan_in C, fan_out 3C
        bound = math.sqrt(6 / (embed_dim + 3 * embed_dim))
        self.in_proj_weight = Parameter(_uniform(rng, (3 * embed_dim, embed_dim), bound, dtype))
        self.in_proj_bias = Parameter(xp.zeros(3 * embed_dim, dtype=dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, rng=rng, dtype=dtype)
        if bias:
            self.out_proj.bias.data[:] = 0

    def forward(self, x, memory=None, mask=None, causal=False):
        C, H = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if memory is None:
            q, k, v = F.linear(x, w, b).split(3, axis=-1)  # 3 × (B, T, C)
        else:
            q = F.linear(x, w[:C], None if b is None else b[:C])  # (B, Tq, C)
            k, v = F.linear(memory, w[C:], None if b is None else b[C:]).split(2, axis=-1)  # 2 × (B, Tk, C)
        y = F.attention(split_heads(q, H), split_heads(k, H), split_heads(v, H), causal=causal, mask=mask)
        return self.out_proj(record("y", merge_heads(y)))  # (B, Tq, C), the heads side by side

    def extra_repr(self):
        return f"{self.embed_dim}, num_heads={self.num_heads}"


def sinusoidal_encoding(n_positions: int, dim: int, dtype=DEFAULT_DTYPE):
    """The fixed positional encoding of Vaswani et al. (2017), (n_positions, dim):
    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim))."""
    pos = xp.arange(n_positions, dtype=xp.float64)[:, None]  # (P, 1)
    freq = xp.exp(-math.log(10000.0) * xp.arange(0, dim, 2, dtype=xp.float64) / dim)  # (ceil(dim/2),)
    pe = xp.zeros((n_positions, dim))
    pe[:, 0::2] = xp.sin(pos * freq)
    pe[:, 1::2] = xp.cos(pos * freq[: dim // 2])
    return pe.astype(dtype)
