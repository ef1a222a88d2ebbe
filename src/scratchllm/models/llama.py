"""Llama: the decoder-only Transformer of today's open models (Touvron et al.
2023; Mistral, Qwen2, Qwen3 and SmolLM2 are the same design).

It is the GPT with four changes:

* RMSNorm instead of LayerNorm: each vector divided by its root mean square,
  then scaled; no mean subtracted, no shift.
* Rotary position embeddings (RoPE) instead of a learned position table: no
  position vectors are added to the tokens; inside attention, each query and
  key is rotated by an angle proportional to its position, pair of numbers by
  pair, so that a query·key score depends only on how far apart they are.
* SwiGLU instead of GELU: two projections of the token, one through SiLU as a
  gate that scales the other element by element, then a projection back.
* Grouped-query attention: fewer key/value heads than query heads, each
  key/value head read by a group of query heads (smaller KV cache).

ids -> embed_tokens -> num_hidden_layers × [x + attn(rms(x)), x + mlp(rms(x))]
-> norm -> lm_head. Parameter names are Hugging Face's
(``model.layers.0.self_attn.q_proj.weight`` …) so loading is a table.
Shapes: B batch, T time, C = hidden_size, H query heads, Hkv key/value heads,
D = head_dim, I = intermediate_size, V = vocab_size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import functional as F
from ..backend import DEFAULT_DTYPE, xp
from ..errors import ScratchError
from ..nn import Embedding, Linear, Module, ModuleList, Parameter, RMSNorm, init_enabled, merge_heads
from ..tensor import Tensor, record, tape
from .base import ATTN_PARTS, LanguageModel


@dataclass
class LlamaConfig:
    # Hugging Face's field names (config.json of LlamaForCausalLM and its relatives)
    vocab_size: int = 65
    hidden_size: int = 128
    intermediate_size: int = 352  # about 8/3 · hidden_size: SwiGLU's three matrices weigh as GPT's two at 4×
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = 2  # None: as many as query heads
    head_dim: int | None = None  # None: hidden_size / num_attention_heads (Qwen3 sets its own)
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 64  # the longest text read
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    #                                     "original_max_position_embeddings"}
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # biases of q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias also sets o_bias)
    mlp_bias: bool = False
    initializer_range: float = 0.02
    # what Hugging Face says through the model type rather than a field
    o_bias: bool = False  # a bias in o_proj (Llama with attention_bias true)
    qk_norm: bool = False  # Qwen3: an RMSNorm over each head's query and key before the rotation
    sliding_window: int | None = None  # Mistral: attention within a window; texts longer than it are refused

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ScratchError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                                   f"({self.num_attention_heads}), or head_dim given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ScratchError(f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                               f"num_attention_heads ({self.num_attention_heads})")
        if self.head_dim % 2:
            raise ScratchError(f"head_dim ({self.head_dim}) must be even: rotary embedding turns pairs")
        if self.rope_scaling is not None:  # a copy of its own, θ kept in rope_theta alone
            self.rope_scaling = {k: v for k, v in self.rope_scaling.items() if k != "rope_theta"} or None
        kind = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if kind not in ("default", "llama3"):
            raise ScratchError(f"rope_type {kind!r} is not supported; supported: 'default' and 'llama3'")
        if kind == "llama3":
            need = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            missing = [n for n in need if n not in self.rope_scaling]
            if missing:
                raise ScratchError(f"rope_scaling of type 'llama3' lacks {', '.join(missing)}")


# ---- the blocks ----------------------------------------------------------------------
class LlamaAttention(Module):
    def __init__(self, cfg: LlamaConfig, rng):
        C, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, Hkv, D
        self.q_proj = Linear(C, H * D, bias=cfg.attention_bias, rng=rng)
        self.k_proj = Linear(C, Hkv * D, bias=cfg.attention_bias, rng=rng)
        self.v_proj = Linear(C, Hkv * D, bias=cfg.attention_bias, rng=rng)
        self.o_proj = Linear(H * D, C, bias=cfg.o_bias, rng=rng)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, eps=cfg.rms_norm_eps)
            self.k_norm = RMSNorm(D, eps=cfg.rms_norm_eps)

    def forward(self, x, rope, cache=None):
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).reshape(B, T, H, D)  # (B, T, H, D)
        k = self.k_proj(x).reshape(B, T, Hkv, D)  # (B, T, Hkv, D)
        v = self.v_proj(x).reshape(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        if hasattr(self, "q_norm"):  # each head's vector normalised on its own
            q, k = self.q_norm(q), self.k_norm(k)
        q = record("q_pre", q.transpose(1, 2))  # (B, H, T, D)
        k = record("k_pre", k.transpose(1, 2))  # (B, Hkv, T, D)
        cos, sin = rope
        q, k = F.rope(q, cos, sin), F.rope(k, cos, sin)  # turned by their positions' angles
        if cache is None:
            y = F.attention(q, k, v, causal=True)  # (B, H, T, D)
        else:
            y = cache.attend(q, k, v)  # (B, H, T, D), keys/values of earlier tokens from the cache
        return self.o_proj(record("y", merge_heads(y)))  # (B, T, H·D) -> (B, T, C)


class LlamaMLP(Module):
    def __init__(self, cfg: LlamaConfig, rng):
        C, I = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(C, I, bias=cfg.mlp_bias, rng=rng)
        self.up_proj = Linear(C, I, bias=cfg.mlp_bias, rng=rng)
        self.down_proj = Linear(I, C, bias=cfg.mlp_bias, rng=rng)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, I) each
        if tape.active is None:
            h = F.swiglu(gate, up)  # silu(gate) · up in one pass
        else:  # a trace shows silu(gate) as a value of its own
            h = record("prod", record("silu", F.silu(gate)) * up)
        return self.down_proj(h)  # (B, T, C)


class LlamaDecoderLayer(Module):
    def __init__(self, cfg: LlamaConfig, rng):
        self.self_attn = LlamaAttention(cfg, rng)
        self.mlp = LlamaMLP(cfg, rng)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, x, rope, cache=None):
        x = record("resid_1", x + self.self_attn(self.input_layernorm(x), rope, cache))  # pre-norm residual
        return x + self.mlp(self.post_attention_layernorm(x))


# recorded path -> public trace name (FAMILY names: the RMSNorms take GPT's ln_ names)
_L = r"model\.layers\.(\d+)"
_TRACE_NAMES = (
    (r"model\.embed_tokens", "tok_emb"),
    (r"(emb|logits)", r"\1"),
    (rf"{_L}\.input_layernorm", r"h.\1.ln_1"),
    (rf"{_L}\.post_attention_layernorm", r"h.\1.ln_2"),
    (rf"{_L}\.resid_1", r"h.\1.resid_1"),
    (rf"{_L}\.self_attn\.(q_pre|k_pre)", r"h.\1.attn.\2"),
    (rf"{_L}\.self_attn\.{ATTN_PARTS}", r"h.\1.attn.\2"),
    (rf"{_L}\.self_attn", r"h.\1.attn.out"),
    (rf"{_L}\.mlp\.gate_proj", r"h.\1.mlp.gate"),
    (rf"{_L}\.mlp\.up_proj", r"h.\1.mlp.up"),
    (rf"{_L}\.mlp\.(silu|prod)", r"h.\1.mlp.\2"),
    (rf"{_L}\.mlp", r"h.\1.mlp.out"),
    (_L, r"h.\1.resid_2"),
    (r"model\.norm", "ln_f"),
)


class Llama(LanguageModel):
    kind = "llama"
    trace_names = _TRACE_NAMES

    def __init__(self, config: LlamaConfig, rng=None, seed: int = 0):
        self.config = cfg = config
        rng = rng if rng is not None else xp.random.default_rng(seed)
        self.model = Module()
        self.model.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rng=rng)
        self.model.layers = ModuleList(LlamaDecoderLayer(cfg, rng) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, rng=rng)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two uses
        self._inv_freq = F.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)  # (D/2,) float64
        self._init_weights(rng)

    def _init_weights(self, rng):
        """Hugging Face's init for this family: N(0, initializer_range) for every
        matrix and the embedding, zero biases, norms' scales 1."""
        if not init_enabled():  # the weights are about to be read from a file
            return
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif "norm" not in name:
                p.data[...] = (rng.standard_normal(p.shape) * self.config.initializer_range).astype(p.dtype)

    # ---- forward ------------------------------------------------------------------------
    def forward(self, ids, targets=None, cache=None):
        """ids (B, T) ints -> logits (B, T, V); with targets also the mean loss."""
        ids = xp.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim == 1:
            ids = ids[None]
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.context_length:
            raise ScratchError(f"sequence of {start + T} tokens is longer than this model reads "
                               f"({self._context_reason()})")
        x = record("emb", self.model.embed_tokens(ids))  # (B, T, C): no position vectors are added
        rope = F.rope_cos_sin(self._inv_freq, start, T, x.dtype)  # (T, D/2) each, shared by all layers
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += T
        x = self.model.norm(x)
        logits = record("logits", F.linear(x, self.lm_head.weight))  # (B, T, V)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets)

    def _context_reason(self) -> str:
        cfg = self.config
        if cfg.sliding_window is not None and cfg.sliding_window < cfg.max_position_embeddings:
            return (f"its sliding window of {cfg.sliding_window} tokens: attention within a window "
                    "is not computed here, so longer texts are refused")
        return f"max_position_embeddings {cfg.max_position_embeddings}"

    # ---- the interface of every language model (models/base.py) -----------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        cfg = self.config
        return min(cfg.max_position_embeddings, cfg.sliding_window or cfg.max_position_embeddings)

    @property
    def n_layer(self) -> int:
        return self.config.num_hidden_layers

    @property
    def n_head(self) -> int:
        return self.config.num_attention_heads

    @property
    def n_kv_head(self) -> int:
        return self.config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def n_embd(self) -> int:
        return self.config.hidden_size

    def token_embedding(self) -> Parameter:
        return self.model.embed_tokens.weight

    def unembedding(self) -> Parameter:
        return self.lm_head.weight

    def final_norm(self, x: Tensor) -> Tensor:
        return self.model.norm(x)

    # ---- inference ------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> "LlamaKVCache":
        return LlamaKVCache(self, batch_size, self.model.embed_tokens.weight.dtype)

    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, **kwargs):
        """Continue ``ids`` (B, T) by ``max_new_tokens`` sampled tokens -> (B, T + n)."""
        from ..generate import generate  # sampling lives in its own layer

        return generate(self, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        **kwargs)

    # ---- saving ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def from_config(cls, d: dict) -> "Llama":
        return cls(LlamaConfig(**d))


class LlamaKVCache:
    """Keys (after their rotation) and values of the tokens seen so far, per
    layer: only the Hkv key/value heads are stored, so grouped-query attention
    shrinks the cache by H / Hkv. The store grows by doubling, since a model's
    context (max_position_embeddings) may be far longer than a text."""

    def __init__(self, model: Llama, batch_size: int, dtype=DEFAULT_DTYPE):
        self.n_head, self.n_kv_head, self.head_dim = model.n_head, model.n_kv_head, model.head_dim
        self.limit, self.batch_size, self.dtype = model.context_length, batch_size, dtype
        self.k = [None] * model.n_layer  # per layer (B, Hkv, capacity, D)
        self.v = [None] * model.n_layer
        self.length = 0

    def layer(self, i):
        return _LayerCache(self, i)

    def _room(self, i, hi):
        """Layer i's stores, grown to hold ``hi`` tokens."""
        k = self.k[i]
        if k is None or k.shape[2] < hi:
            cap = min(self.limit, max(hi, 64, 2 * (0 if k is None else k.shape[2])))
            shape = (self.batch_size, self.n_kv_head, cap, self.head_dim)
            new_k, new_v = xp.zeros(shape, dtype=self.dtype), xp.zeros(shape, dtype=self.dtype)
            if k is not None:
                new_k[:, :, :self.length] = k[:, :, :self.length]
                new_v[:, :, :self.length] = self.v[i][:, :, :self.length]
            self.k[i], self.v[i] = new_k, new_v
        return self.k[i], self.v[i]


class _LayerCache:
    def __init__(self, cache, i):
        self.cache, self.i = cache, i

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B, H, Tn, D), k and v (B, Hkv, Tn, D) of the new tokens (q and k
        rotated) -> (B, H, Tn, D); stores their keys and values.

        Inference only (no graph): plain arrays throughout, since with one new
        token per step the matrices are tiny and Python overhead is the cost."""
        c = self.cache
        B, H, Tn, D = q.shape
        lo, hi = c.length, c.length + Tn
        keys, values = c._room(self.i, hi)  # (B, Hkv, capacity, D)
        keys[:, :, lo:hi] = k.data
        values[:, :, lo:hi] = v.data
        G = H // c.n_kv_head
        qg = xp.ascontiguousarray(q.data).reshape(B, c.n_kv_head, G * Tn, D)  # the group's queries in a row
        scale = q.dtype.type(1.0 / D ** 0.5)
        # a single new token is the last position: it may see every cached key, no mask
        a = F._attention_weights(qg, keys[:, :, :hi], scale, Tn > 1, None, groups=G)  # (B, Hkv, G·Tn, hi)
        return Tensor((a @ values[:, :, :hi]).reshape(B, H, Tn, D))  # (B, H, Tn, D)
