"""The original Transformer: an encoder–decoder for translation (Vaswani et al. 2017).

    source ids -> embed·√d_model + positions -> N × encoder layer -> memory
    target ids -> embed·√d_model + positions -> N × decoder layer -> logits

An encoder layer is self-attention then a position-wise feed-forward network;
a decoder layer is causal self-attention (a target token sees only earlier
target tokens), cross-attention (queries from the target, keys and values from
the encoder's output, the "memory") and a feed-forward network. Every
sub-layer sits inside a residual connection with a LayerNorm, either after the
addition (post-norm, as in the paper) or before the sub-layer (pre-norm, which
trains more easily; then a final LayerNorm closes the encoder and the decoder,
as torch.nn.Transformer does with ``norm_first=True``).

Padding: positions holding ``pad_id`` are never attended to (they are masked
as keys in every attention). Parameter names mirror torch.nn.Transformer
(``encoder.layers.0.self_attn.in_proj_weight``, ``decoder.layers.0.multihead_attn``,
``.linear1``, ``.norm1`` …), so copying weights from it is a rename table.

Shapes: B batch, S source length, T target length, C = d_model, H = n_head,
D = C / H, F = d_ff, V vocabulary, L decoder layers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import functional as F
from ..backend import xp
from ..errors import ScratchError
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, MultiHeadAttention, Parameter, \
    init_enabled, merge_heads, sinusoidal_encoding, split_heads
from ..tensor import Tensor, no_grad, record
from .base import ATTN_PARTS, DROP_PARTS, LanguageModel


@dataclass
class TransformerConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 256
    n_head: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 256  # longest source or target sequence (positions 0 … max_len − 1)
    positional: str = "sinusoidal"  # fixed, as the paper; or "learned"
    shared_embeddings: bool = False  # one table for source and target (a joint vocabulary)
    tie_output: bool = True  # the output layer reuses the target embedding
    norm_first: bool = True  # pre-norm; False = post-norm as in the paper
    pad_id: int = 0
    activation: str = "relu"  # or "gelu" (tanh form)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ScratchError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.positional not in ("sinusoidal", "learned"):
            raise ScratchError(f"positional must be 'sinusoidal' or 'learned', not {self.positional!r}")
        if self.activation not in _ACTIVATIONS:
            raise ScratchError(f"activation must be one of {sorted(_ACTIVATIONS)}, not {self.activation!r}")
        if self.shared_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ScratchError("shared_embeddings needs one joint vocabulary: "
                               f"src_vocab_size {self.src_vocab_size} != tgt_vocab_size {self.tgt_vocab_size}")


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def residual(x, norm, sublayer, norm_first, name="resid"):
    """x + sublayer(norm(x)) (pre-norm) or norm(x + sublayer(x)) (post-norm, the paper);
    a trace keeps the sum as ``name``."""
    if norm_first:
        return record(name, x + sublayer(norm(x)))
    return norm(record(name, x + sublayer(x)))


class EncoderLayer(Module):
    def __init__(self, cfg: TransformerConfig, rng):
        C = cfg.d_model
        self.self_attn = MultiHeadAttention(C, cfg.n_head, rng=rng)
        self.linear1 = Linear(C, cfg.d_ff, rng=rng)
        self.linear2 = Linear(cfg.d_ff, C, rng=rng)
        self.norm1 = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.norm2 = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.dropout1 = Dropout(cfg.dropout, rng=rng)
        self.dropout2 = Dropout(cfg.dropout, rng=rng)
        self.norm_first, self.act = cfg.norm_first, _ACTIVATIONS[cfg.activation]

    def feed_forward(self, x):
        return self.linear2(record("ff.act", self.act(self.linear1(x))))  # (B, S, C) -> (B, S, F) -> (B, S, C)

    def forward(self, x, src_mask):
        x = residual(x, self.norm1, lambda h: self.dropout1(self.self_attn(h, mask=src_mask)), self.norm_first,
                     "resid_1")
        return residual(x, self.norm2, lambda h: self.dropout2(self.feed_forward(h)), self.norm_first, "resid_2")


class DecoderLayer(Module):
    def __init__(self, cfg: TransformerConfig, rng):
        C = cfg.d_model
        self.self_attn = MultiHeadAttention(C, cfg.n_head, rng=rng)
        self.multihead_attn = MultiHeadAttention(C, cfg.n_head, rng=rng)  # cross-attention, torch's name
        self.linear1 = Linear(C, cfg.d_ff, rng=rng)
        self.linear2 = Linear(cfg.d_ff, C, rng=rng)
        self.norm1 = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.norm2 = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.norm3 = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.dropout1 = Dropout(cfg.dropout, rng=rng)
        self.dropout2 = Dropout(cfg.dropout, rng=rng)
        self.dropout3 = Dropout(cfg.dropout, rng=rng)
        self.norm_first, self.act = cfg.norm_first, _ACTIVATIONS[cfg.activation]

    feed_forward = EncoderLayer.feed_forward

    def forward(self, x, memory, src_mask, tgt_mask, cache=None):
        """x (B, T, C), memory (B, S, C) -> (B, T, C). With a cache (a
        :class:`_LayerCache`) x holds only the new tokens, and memory is unused:
        its keys and values were computed once, when the cache was made."""
        if cache is None:
            self_attn = lambda h: self.self_attn(h, mask=tgt_mask, causal=True)  # noqa: E731
            cross_attn = lambda h: self.multihead_attn(h, memory, mask=src_mask)  # noqa: E731
        else:
            self_attn, cross_attn = cache.self_attention, cache.cross_attention
        x = residual(x, self.norm1, lambda h: self.dropout1(self_attn(h)), self.norm_first, "resid_1")
        x = residual(x, self.norm2, lambda h: self.dropout2(cross_attn(h)), self.norm_first, "resid_2")
        return residual(x, self.norm3, lambda h: self.dropout3(self.feed_forward(h)), self.norm_first, "resid_3")


def _xavier_uniform(rng, shape, dtype):
    bound = math.sqrt(6 / (shape[0] + shape[1]))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _layer_names(path: str, short: str, attentions: dict, norms: str, resids: str) -> list:
    """Trace names of one stack's layers: ``{path}.{i}.…`` recorded -> ``{short}.{i}.…`` shown."""
    return [
        (rf"{path}\.(\d+)\.({norms}|{resids}|ff\.act)", rf"{short}.\1.\2"),
        *[(rf"{path}\.(\d+)\.{attr}\.{ATTN_PARTS}", rf"{short}.\1.{name}.\2") for attr, name in attentions.items()],
        *[(rf"{path}\.(\d+)\.{attr}", rf"{short}.\1.{name}.out") for attr, name in attentions.items()],
        (rf"{path}\.(\d+)\.dropout(\d)\.{DROP_PARTS}", rf"{short}.\1.drop_\2.\3"),
        (rf"{path}\.(\d+)\.linear1", rf"{short}.\1.ff.fc"),
        (rf"{path}\.(\d+)\.linear2", rf"{short}.\1.ff.out"),
        (rf"{path}\.(\d+)", rf"{short}.\1.out"),
    ]


# recorded path -> public trace name (see scratchllm.explain.trace for what each holds)
_TRACE_NAMES = (
    (r"src_embed", "enc.tok_emb"),
    (r"tgt_embed", "dec.tok_emb"),
    (rf"dropout\.{DROP_PARTS}", r"enc.drop.\1"),  # one Dropout module for both sides: the encoder's runs first
    (rf"dropout\.{DROP_PARTS}#2", r"dec.drop.\1"),
    (r"(enc|dec)\.(pos_emb|in)", r"\1.\2"),
    *_layer_names(r"encoder\.layers", "enc", {"self_attn": "self_attn"}, "norm1|norm2", "resid_1|resid_2"),
    *_layer_names(r"decoder\.layers", "dec", {"self_attn": "self_attn", "multihead_attn": "cross_attn"},
                  "norm1|norm2|norm3", "resid_1|resid_2|resid_3"),
    (r"encoder\.norm", "enc.norm"),
    (r"decoder\.norm", "dec.norm"),
    (r"logits", "logits"),
)


class Transformer(LanguageModel):
    """The encoder–decoder. As a :class:`LanguageModel` its sizes are the decoder's: vocab_size is the
    target vocabulary, context_length max_len, n_layer the decoder layers; its cache is made from the
    encoder's output (:meth:`new_cache` takes memory, not a batch size)."""

    kind = "transformer"
    trace_names = _TRACE_NAMES
    is_encoder_decoder = True

    def __init__(self, config: TransformerConfig, rng=None, seed: int = 0):
        self.config = cfg = config
        rng = rng if rng is not None else xp.random.default_rng(seed)
        C = cfg.d_model
        self.src_embed = Embedding(cfg.src_vocab_size, C, rng=rng)
        self.tgt_embed = Embedding(cfg.tgt_vocab_size, C, rng=rng)
        if cfg.shared_embeddings:
            self.tgt_embed.weight = self.src_embed.weight  # one Parameter, two uses
        if cfg.positional == "learned":
            self.src_pos_embed = Embedding(cfg.max_len, C, rng=rng)  # N(0, 1): the scale of √C·token embedding
            self.tgt_pos_embed = Embedding(cfg.max_len, C, rng=rng)
        self.dropout = Dropout(cfg.dropout, rng=rng)  # on embeddings + positions
        self.encoder = Module()
        self.encoder.layers = ModuleList(EncoderLayer(cfg, rng) for _ in range(cfg.n_encoder_layers))
        self.decoder = Module()
        self.decoder.layers = ModuleList(DecoderLayer(cfg, rng) for _ in range(cfg.n_decoder_layers))
        if cfg.norm_first:  # pre-norm leaves the residual stream unnormalised: close it
            self.encoder.norm = LayerNorm(C, eps=cfg.layer_norm_eps)
            self.decoder.norm = LayerNorm(C, eps=cfg.layer_norm_eps)
        if not cfg.tie_output:
            self.lm_head = Linear(C, cfg.tgt_vocab_size, bias=False, rng=rng)
        # The fixed encoding of the paper: PE[p, 2i] = sin(p / 10000^(2i/C)), PE[p, 2i+1] = cos(same angle)
        self._pe = sinusoidal_encoding(cfg.max_len, C) if cfg.positional == "sinusoidal" else None
        self._init_weights(rng)

    def _init_weights(self, rng):
        """Xavier-uniform for the layers' matrices, as torch.nn.Transformer.
        Token embeddings N(0, 1/C): after the √C scale they have unit variance,
        like the positional encoding, and a tied output layer gives logits of order 1."""
        if not init_enabled():  # the weights are about to be read from a file
            return
        C = self.config.d_model
        for name, p in self.named_parameters():
            if name.startswith(("encoder.layers", "decoder.layers", "lm_head")) and p.ndim == 2:
                p.data[...] = _xavier_uniform(rng, p.shape, p.dtype)
        for emb in (self.src_embed, self.tgt_embed):
            emb.weight.data[...] = (rng.standard_normal(emb.weight.shape) / math.sqrt(C)).astype(emb.weight.dtype)

    # ---- embeddings ---------------------------------------------------------------
    def _embed(self, embed, pos_embed, ids, start=0, side="enc"):
        """ids (B, T) -> token embedding·√C + position (start … start+T−1), then dropout -> (B, T, C).
        A trace keeps the positions as ``{side}.pos_emb`` and the sum as ``{side}.in``."""
        T = ids.shape[1]
        if start + T > self.config.max_len:
            raise ScratchError(f"sequence of {start + T} tokens is longer than max_len {self.config.max_len}")
        x = embed(ids) * math.sqrt(self.config.d_model)  # (B, T, C)
        if self._pe is not None:
            pos = Tensor(self._pe[start:start + T].astype(x.dtype))  # (T, C), fixed, broadcast over B
        else:
            pos = pos_embed(xp.arange(start, start + T))  # (T, C)
        return record(side + ".in", self.dropout(x + record(side + ".pos_emb", pos)))

    def _key_mask(self, ids):
        """True at real tokens, False at padding: (B, T) -> (B, 1, 1, T), broadcast over heads and queries."""
        return (ids != self.config.pad_id)[:, None, None, :]

    # ---- the two halves ----------------------------------------------------------
    def encode(self, src_ids):
        """src_ids (B, S) -> (memory (B, S, C), src_mask (B, 1, 1, S) True at real tokens)."""
        src_ids = _as_ids(src_ids)
        src_mask = self._key_mask(src_ids)
        x = self._embed(self.src_embed, getattr(self, "src_pos_embed", None), src_ids)
        for layer in self.encoder.layers:
            x = layer(x, src_mask)
        if self.config.norm_first:
            x = self.encoder.norm(x)
        return x, src_mask

    def decode(self, tgt_ids, memory, src_mask, cache=None):
        """tgt_ids (B, T) -> logits (B, T, V) for the next token at each position.

        With ``cache`` (from :meth:`new_cache`) tgt_ids are only the new tokens,
        following those already in the cache; memory and src_mask are then
        taken from the cache (they may be None). Cached decoding is inference
        only: it records no graph."""
        tgt_ids = _as_ids(tgt_ids)
        if cache is not None:
            with no_grad():
                return self._decode(tgt_ids, None, cache.src_mask, None, cache)
        return self._decode(tgt_ids, memory, src_mask, self._key_mask(tgt_ids), None)

    def _decode(self, tgt_ids, memory, src_mask, tgt_mask, cache):
        start = cache.begin(tgt_ids, self.config.pad_id) if cache is not None else 0
        x = self._embed(self.tgt_embed, getattr(self, "tgt_pos_embed", None), tgt_ids, start, "dec")  # (B, T, C)
        for i, layer in enumerate(self.decoder.layers):
            x = layer(x, memory, src_mask, tgt_mask, cache.layer(i) if cache is not None else None)
        if cache is not None:
            cache.length += tgt_ids.shape[1]
        if self.config.norm_first:
            x = self.decoder.norm(x)
        head = self.tgt_embed.weight if self.config.tie_output else self.lm_head.weight
        return record("logits", F.linear(x, head))  # (B, T, V)

    # ---- training ----------------------------------------------------------------
    def forward(self, src_ids, tgt_in_ids):
        """src_ids (B, S), tgt_in_ids (B, T) (starting with BOS) -> logits (B, T, V)."""
        memory, src_mask = self.encode(src_ids)
        return self.decode(tgt_in_ids, memory, src_mask)

    def loss(self, src_ids, tgt_in_ids, tgt_out_ids, label_smoothing: float = 0.0):
        """Mean cross-entropy of tgt_out_ids (tgt_in shifted left by one) over non-pad targets."""
        logits = self(src_ids, tgt_in_ids)  # (B, T, V)
        return F.cross_entropy(logits, _as_ids(tgt_out_ids), ignore_index=self.config.pad_id,
                               label_smoothing=label_smoothing)

    # ---- inference ---------------------------------------------------------------
    def new_cache(self, memory, src_mask, max_len: int, beams: int = 1) -> "DecoderCache":
        """A cache for step-wise decoding of up to ``max_len`` target tokens per row,
        with the cross-attention keys and values of ``memory`` (B, S, C) computed
        now, once, and repeated for ``beams`` rows per sentence (B·beams rows)."""
        return DecoderCache(self, memory, src_mask, max_len, beams)

    # ---- the interface of every language model (models/base.py) -----------------------
    @property
    def vocab_size(self) -> int:
        return self.config.tgt_vocab_size

    @property
    def context_length(self) -> int:
        return self.config.max_len

    @property
    def n_layer(self) -> int:
        return self.config.n_decoder_layers

    @property
    def n_head(self) -> int:
        return self.config.n_head

    @property
    def n_embd(self) -> int:
        return self.config.d_model

    @property
    def ignore_index(self) -> int:
        return self.config.pad_id

    def token_embedding(self) -> Parameter:
        return self.tgt_embed.weight

    def unembedding(self) -> Parameter:
        return self.tgt_embed.weight if self.config.tie_output else self.lm_head.weight

    def final_norm(self, x: Tensor) -> Tensor:
        # post-norm: every layer already ends in a LayerNorm, and nothing follows the last
        return self.decoder.norm(x) if self.config.norm_first else x

    def traced_pass(self, inputs, targets=None):
        if targets is None:
            self(*inputs)
            return None
        return self.loss(*inputs, targets)

    def dropout_sites(self) -> dict:
        cfg = self.config
        sites = {"enc.drop": "source embeddings·√C + positions, before encoder layer 0"}
        for i in range(cfg.n_encoder_layers):
            sites[f"enc.{i}.drop_1"] = f"encoder layer {i}'s self-attention output, before resid_1"
            sites[f"enc.{i}.drop_2"] = f"encoder layer {i}'s feed-forward output, before resid_2"
        sites["dec.drop"] = "target embeddings·√C + positions, before decoder layer 0"
        for i in range(cfg.n_decoder_layers):
            sites[f"dec.{i}.drop_1"] = f"decoder layer {i}'s self-attention output, before resid_1"
            sites[f"dec.{i}.drop_2"] = f"decoder layer {i}'s cross-attention output, before resid_2"
            sites[f"dec.{i}.drop_3"] = f"decoder layer {i}'s feed-forward output, before resid_3"
        return sites

    # ---- saving ------------------------------------------------------------------
    def config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def from_config(cls, d: dict) -> "Transformer":
        return cls(TransformerConfig(**d))


def _as_ids(ids):
    ids = xp.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if ids.dtype.kind not in "iu":
        raise ScratchError(f"token ids must be integers, got {ids.dtype}")
    return ids[None] if ids.ndim == 1 else ids


class DecoderCache:
    """What step-wise decoding keeps between steps, for N rows (sentences × beams):

    * self-attention keys and values of every target token so far, per layer,
      preallocated for ``max_len`` tokens (L, N, H, max_len, D), so a new token
      costs one row of attention instead of re-running the whole prefix;
    * cross-attention keys and values of the encoder output, per layer
      (N, H, S, D), computed once per sentence: they do not change while decoding.
    """

    def __init__(self, model: Transformer, memory, src_mask, max_len: int, beams: int = 1):
        cfg = model.config
        if max_len > cfg.max_len:
            raise ScratchError(f"cannot decode {max_len} tokens: the model knows max_len {cfg.max_len} positions")
        B = memory.shape[0]
        N, H, D = B * beams, cfg.n_head, cfg.d_model // cfg.n_head
        dtype = memory.dtype
        shape = (cfg.n_decoder_layers, N, H, max_len, D)
        self.k, self.v = xp.empty(shape, dtype=dtype), xp.empty(shape, dtype=dtype)
        self.keep = xp.zeros((N, max_len), dtype=bool)  # True at real (non-pad) target tokens
        self.length, self.max_len = 0, max_len
        self.layers = [layer for layer in model.decoder.layers]
        C = cfg.d_model
        self.cross_k, self.cross_v = [], []
        with no_grad():
            for layer in self.layers:
                w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
                k, v = F.linear(memory, w[C:], b[C:]).split(2, axis=-1)  # 2 × (B, S, C)
                self.cross_k.append(xp.repeat(split_heads(k, H).data, beams, axis=0))  # (N, H, S, D)
                self.cross_v.append(xp.repeat(split_heads(v, H).data, beams, axis=0))
        self.src_mask = xp.repeat(src_mask, beams, axis=0)  # (N, 1, 1, S)

    def begin(self, tgt_ids, pad_id) -> int:
        """Record which new tokens are padding; return the position of the first."""
        T = tgt_ids.shape[1]
        if self.length + T > self.max_len:
            raise ScratchError(f"the cache holds {self.max_len} tokens; cannot add {T} to {self.length}")
        self.keep[:, self.length:self.length + T] = tgt_ids != pad_id
        return self.length

    def layer(self, i) -> "_LayerCache":
        return _LayerCache(self, i)

    def reorder(self, rows):
        """Row r takes the self-attention history of row rows[r] (a beam
        continuing another beam's prefix). Rows must stay within their sentence:
        its cross-attention keys and values are the same for all its beams."""
        rows = xp.asarray(rows)
        moved = xp.flatnonzero(rows != xp.arange(len(rows)))  # beams that continue their own prefix stay put
        if len(moved) == 0:
            return
        n, src = self.length, rows[moved]
        self.k[:, moved, :, :n] = self.k[:, src, :, :n]  # the right side is a copy: no aliasing
        self.v[:, moved, :, :n] = self.v[:, src, :, :n]
        self.keep[moved, :n] = self.keep[src, :n]

    def select(self, rows):
        """Keep only the given rows, in this order (e.g. drop finished sentences)."""
        n = self.length
        k = xp.empty((self.k.shape[0], len(rows)) + self.k.shape[2:], dtype=self.k.dtype)
        v = xp.empty_like(k)
        k[:, :, :, :n] = self.k[:, rows, :, :n]  # copy only the filled part of the buffers
        v[:, :, :, :n] = self.v[:, rows, :, :n]
        self.k, self.v = k, v
        self.keep = self.keep[rows]
        self.cross_k = [a[rows] for a in self.cross_k]
        self.cross_v = [a[rows] for a in self.cross_v]
        self.src_mask = self.src_mask[rows]


class _LayerCache:
    """The cached attentions of decoder layer i; inputs are Tensors (N, Tn, C) of the new tokens."""

    def __init__(self, cache: DecoderCache, i: int):
        self.cache, self.i = cache, i
        self.layer = cache.layers[i]

    def self_attention(self, x):
        c, mha = self.cache, self.layer.self_attn
        H = mha.num_heads
        q, k, v = (split_heads(t, H) for t in F.linear(x, mha.in_proj_weight, mha.in_proj_bias).split(3, axis=-1))
        lo, hi = c.length, c.length + x.shape[1]
        c.k[self.i, :, :, lo:hi] = k.data  # (N, H, Tn, D) appended
        c.v[self.i, :, :, lo:hi] = v.data
        mask = c.keep[:, None, None, :hi]  # (N, 1, 1, hi): padding keys stay hidden
        # causal with Tq < Tk lines up at the bottom right: new token j sees keys 0 … lo + j
        y = F.attention(q, Tensor(c.k[self.i, :, :, :hi]), Tensor(c.v[self.i, :, :, :hi]), causal=True, mask=mask)
        return mha.out_proj(merge_heads(y))  # (N, Tn, C)

    def cross_attention(self, x):
        c, mha = self.cache, self.layer.multihead_attn
        C, H = mha.embed_dim, mha.num_heads
        q = split_heads(F.linear(x, mha.in_proj_weight[:C], mha.in_proj_bias[:C]), H)  # (N, H, Tn, D)
        y = F.attention(q, Tensor(c.cross_k[self.i]), Tensor(c.cross_v[self.i]), mask=c.src_mask)
        return mha.out_proj(merge_heads(y))  # (N, Tn, C)
