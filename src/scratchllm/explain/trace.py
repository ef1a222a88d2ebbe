"""A trace of one pass through a language model (a GPT, a Transformer, a
Llama-family model): every value it computes and, given targets, the
gradient of the loss with respect to each of them. Every recorded value has
its gradient; one the backward pass did not reach is an error, never zeros.

    tr = trace(model, ids, targets)      # a GPT: ids (B, T) or (T,)
    tr = trace(model, (src_ids, tgt_in_ids), targets=tgt_out_ids)   # a Transformer
    tr.names()                           # what was recorded, in the order it was computed
    tr["h.0.attn.weights"]               # (B, H, T, T) the forward value, an ndarray
    tr.loss                              # the model's own loss (float)
    tr.grad("h.0.attn.weights")          # d loss / d that value
    tr.grad("transformer.h.0.attn.c_attn.weight")   # … or of a parameter
    tr = trace(model, ids, targets, train=True, seed=0)   # one training pass: dropout's masks too
    tr["h.0.attn.drop.mask"]             # 1 kept, 0 dropped

The numbers are the model's own. While a trace is active in a thread, the
modules and ops of that thread hand it what they compute (``Module.__call__``
its module's output, ``record()`` the values between modules, the fused
attention op its scores and weights), during the ordinary forward pass. The
gradients come from the ordinary ``backward()``: it keeps the gradients of
the recorded tensors as it passes them (``retain=``), the attention op hands
over the gradients of its scores and weights, which its backward computes
anyway, and the parameters' gradients go to a store of the trace's own
(``leaf_grads=``), so ``.grad`` of the model is never touched.

A trace sees the model in evaluation mode (no dropout), whatever its
``training`` flag says, and changes nothing in it; tracing the same model
from several threads at once is safe. ``train=True`` traces one training
pass instead: every Dropout module draws its mask from a generator of the
trace's own, ``numpy.random.default_rng(seed)`` (the masks of a training
forward run under ``nn.dropout_generator(default_rng(seed))``), with
probability ``p`` if given, else the module's own; the model's flags and
generators are left alone. Each dropout then adds ``{site}.in`` (its input),
``{site}.mask`` (1 kept, 0 dropped: drawn, not computed, so its gradient
reads 0; none where p = 0, as nothing is drawn) and ``{site}.out`` (the kept
values × 1/(1−p), the dropped 0).
``dropout_sites=True`` records ``in`` and ``out`` in evaluation mode too
(there they are equal: Dropout hands its input on).

Names for a GPT (B batch, T time, H heads, D head size, C width, V vocabulary):
``tok_emb`` (B,T,C), ``pos_emb`` (T,C), ``emb`` (B,T,C) their sum entering the
first block, ``h.{i}.ln_1``, ``h.{i}.attn.q`` / ``.k`` / ``.v`` (B,H,T,D),
``h.{i}.attn.scores`` (B,H,T,T) q·k/√D with −inf where masked,
``h.{i}.attn.weights`` (B,H,T,T) their softmax, ``h.{i}.attn.y`` (B,T,C) the
heads side by side, ``h.{i}.attn.out`` after the output projection,
``h.{i}.resid_1``, ``h.{i}.ln_2``, ``h.{i}.mlp.fc`` (B,T,4C), ``h.{i}.mlp.gelu``,
``h.{i}.mlp.out``, ``h.{i}.resid_2``, ``ln_f``, ``logits`` (B,T,V), ``probs``.
Dropout sites: ``drop`` (on ``tok_emb + pos_emb``, its output is ``emb``),
``h.{i}.attn.drop`` (its output is ``h.{i}.attn.out``), ``h.{i}.mlp.drop``.

Names for a Transformer (S source length): ``enc.tok_emb`` (B,S,C) the rows
of the source embedding (before the ·√C), ``enc.pos_emb`` (S,C), ``enc.in`` (the
sum entering the first layer), per layer ``enc.{i}.norm1``,
``enc.{i}.self_attn.q/k/v/scores/weights/y/out`` (weights (B,H,S,S)),
``enc.{i}.resid_1``, ``enc.{i}.norm2``, ``enc.{i}.ff.fc`` / ``.ff.act`` /
``.ff.out``, ``enc.{i}.resid_2``, ``enc.{i}.out`` (the layer's output), then
``enc.norm`` (pre-norm models); the decoder likewise under ``dec.``, with
``dec.{i}.cross_attn.*`` (weights (B,H,T,S), target × source) between its
self-attention and its feed-forward (``norm3``, ``resid_3``), ``dec.norm``,
``logits``, ``probs``. A residual ``resid_k`` is the sum x + sub-layer; in a
post-norm model the following ``norm_k`` is that sum normalised. Dropout
sites: ``enc.drop`` and ``dec.drop`` (on embeddings + positions, their
outputs ``enc.in`` and ``dec.in``), ``enc.{i}.drop_k`` / ``dec.{i}.drop_k``
on the output of sub-layer k before it joins ``resid_k``.

Names for a Llama-family model (Llama, Mistral, Qwen2, Qwen3; Hkv key/value
heads, I the MLP's inner width) are the GPT's where the idea is the same, its
RMSNorms taking the ``ln_`` names: ``tok_emb``, ``emb`` (= tok_emb: no
position vectors), ``h.{i}.ln_1``, ``h.{i}.attn.q_pre`` (B,H,T,D) /
``.k_pre`` (B,Hkv,T,D) what the rotation (RoPE) receives, ``.q`` / ``.k``
after it, ``.v`` (B,Hkv,T,D), ``.scores`` / ``.weights`` (B,H,T,T), ``.y``
(B,T,H·D), ``.out``, ``h.{i}.resid_1``, ``h.{i}.ln_2``, ``h.{i}.mlp.gate`` /
``.up`` (B,T,I), ``.silu`` (silu(gate)), ``.prod`` (silu(gate)·up), ``.out``,
``h.{i}.resid_2``, ``ln_f``, ``logits``, ``probs``.

Each model names what it records in its own ``trace_names`` table
(:class:`scratchllm.models.base.LanguageModel`); this module asks the model
and knows no family.

``probs`` is softmax(logits) taken here with :func:`scratchllm.functional.softmax`;
its gradient is that of the same loss written as −mean log probs[target]
(by the engine's backward of those ops).
"""
from __future__ import annotations

import base64
import json
import numpy as np

from .. import functional as F
from ..backend import to_numpy, xp
from ..errors import ScratchError
from ..nn import Parameter
from ..tensor import Tensor, enable_grad, no_grad, tape

__all__ = ["trace", "Trace"]


# ---- recording -----------------------------------------------------------------
class _Recorder:
    """What a thread's modules and ops hand over during one traced pass."""

    def __init__(self, model, want_grads: bool, train=False, rng=None, p=None, dropout_sites=False):
        self.paths = {id(m): path for path, m in model.named_modules()}
        self.train, self.rng, self.p = train, rng, p  # dropout: training mode, its generator, p if overridden
        self.dropout_sites = train or dropout_sites
        self.scope = [""]  # module paths, the innermost last
        self.values = {}  # path name -> Tensor or ndarray, in the order computed
        self.want_grads = want_grads
        self.retain = {}  # id(tensor) -> its gradient, filled by backward(retain=...)
        self.inner_grads = {}  # path name -> gradient handed over by an op's backward

    def _name(self, local: str) -> str:
        scope = self.scope[-1]
        name = f"{scope}.{local}" if scope else local
        unique, n = name, 2
        while unique in self.values:  # the same value name twice in one scope
            unique, n = f"{name}#{n}", n + 1
        return unique

    def call(self, module, args, kwargs):
        path = self.paths.get(id(module))
        if path is None:  # a module outside the traced model: named by its caller's scope
            return module.forward(*args, **kwargs)
        self.scope.append(path)
        try:
            out = module.forward(*args, **kwargs)
        finally:
            self.scope.pop()
        if path and isinstance(out, Tensor):
            self._keep(path, out)
        return out

    def record(self, name: str, t):
        if isinstance(t, Tensor):
            self._keep(self._name(name), t)

    def _keep(self, name, t: Tensor):
        if name in self.values:
            return
        self.values[name] = t
        if not self.want_grads or t.dtype.kind != "f":
            return
        if not t.requires_grad and t.is_leaf and not isinstance(t, Parameter):
            t.requires_grad = True  # a constant made in this pass (fixed positions): its gradient too
        if t.requires_grad:
            self.retain[id(t)] = None

    def dropout(self, module, x):
        """A Dropout module's forward under the trace: its input handed on
        (evaluation mode), or one training pass drawing from the trace's
        generator; F.dropout hands over the mask it draws (``dropout_mask``)."""
        if not self.dropout_sites:
            return x
        self.record("in", x)
        y = F.dropout(x, module.p if self.p is None else self.p, self.train, self.rng)
        self.record("out", y)
        return y

    def dropout_mask(self, keep, dtype):
        name = self._name("mask")
        self.values[name] = keep.astype(dtype)  # 1 kept, 0 dropped
        if self.want_grads:  # drawn, not computed from anything the loss depends on: its gradient is 0
            self.inner_grads[name] = np.zeros(keep.shape, dtype=dtype)

    def attention(self, q, k, v, scores, weights):
        """The attention op's inputs and internals (arrays); returns the
        function its backward calls with their gradients."""
        names = {key: self._name(key) for key in ("q", "k", "v", "scores", "weights")}
        for key, arr in zip(names, (q, k, v, scores, weights)):
            self.values[names[key]] = arr

        def grads(**arrays):
            for key, g in arrays.items():
                self.inner_grads[names[key]] = np.array(g, copy=True)

        return grads if self.want_grads else None


# ---- the trace ------------------------------------------------------------------
class Trace:
    """Values and gradients of one pass; see the module's docstring for the names."""

    def __init__(self, kind, values, grads, param_grads, loss, ids, targets, train=False, seed=None, p=None):
        self.kind = kind  # the model's kind ("gpt", "transformer", …)
        self.train, self.seed, self.p = train, seed, p  # a training pass: dropout's seed, p if overridden
        self._values = values  # name -> ndarray
        self._grads = grads  # name -> ndarray, or None without targets
        self._param_grads = param_grads  # parameter name -> ndarray, or None
        self.loss = loss  # float, or None without targets
        self.ids = ids  # (B, T); an encoder–decoder: the pair (src (B, S), tgt_in (B, T))
        self.targets = targets

    def names(self) -> list:
        """The recorded values' names, in the order the forward pass computed them."""
        return list(self._values)

    def param_names(self) -> list:
        return list(self._param_grads or ())

    def __getitem__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"{name!r} was not recorded; recorded: {', '.join(self._values)}") from None

    def __contains__(self, name) -> bool:
        return name in self._values

    def grad(self, name: str):
        """d loss / d the value or parameter ``name`` (same shape)."""
        if self._grads is None:
            raise ScratchError("this trace has no gradients: pass targets to trace() to get them")
        if name in self._grads:
            return self._grads[name]
        if name in self._param_grads:
            return self._param_grads[name]
        raise KeyError(f"{name!r} is neither a recorded value nor a parameter of the model")

    def as_dict(self, dtype=np.float32, params: bool = False, names=None) -> dict:
        """Plain data: ``{"kind", "loss", "ids", "targets", "values": {name: array},
        "grads": {name: array}}`` with arrays contiguous in ``dtype``; ``names``
        keeps only those values (default: all); ``params`` adds the parameters'
        gradients to "grads"."""
        cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        keep = self.names() if names is None else list(names)
        for n in keep:
            self[n]  # an unknown name: a KeyError listing what was recorded
        grads = {}
        if self._grads is not None:
            grads = {n: cast(self._grads[n]) for n in keep}
            if params:
                grads.update({n: cast(g) for n, g in self._param_grads.items()})
        ids = [np.asarray(i).tolist() for i in self.ids] if isinstance(self.ids, tuple) else self.ids.tolist()
        return {"kind": self.kind, "loss": self.loss, "ids": ids,
                "targets": None if self.targets is None else np.asarray(self.targets).tolist(),
                "values": {n: cast(self._values[n]) for n in keep}, "grads": grads}

    def to_json(self, params: bool = False, names=None) -> str:
        """JSON for a web page: as :meth:`as_dict` in float32, each array as
        ``{"shape": [...], "dtype": "float32", "data": base64 of its little-endian
        bytes}`` (JavaScript: ``new Float32Array(bytes.buffer)``; −inf survives)."""
        d = self.as_dict(np.dtype("<f4"), params=params, names=names)

        def pack(a):
            return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}

        d["values"] = {n: pack(a) for n, a in d["values"].items()}
        d["grads"] = {n: pack(a) for n, a in d["grads"].items()}
        return json.dumps(d)

    def __repr__(self):
        loss = "" if self.loss is None else f", loss={self.loss:.4f}"
        return f"Trace({self.kind}, {len(self._values)} values{loss})"


def _ids(x, what: str):
    arr = np.asarray(to_numpy(x.data if isinstance(x, Tensor) else x))
    if arr.dtype.kind not in "iu":
        raise ScratchError(f"{what} must be integer token ids, got {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ScratchError(f"{what} must have shape (B, T) or (T,) with T ≥ 1, got {arr.shape}")
    return arr


def _all_param_names(model):
    """Every name a parameter goes by, tied ones under each of their names."""
    names = {}
    for mod_name, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, Parameter):
                names[f"{mod_name}.{attr}" if mod_name else attr] = value
    return names


def trace(model, ids, targets=None, *, train=False, seed=0, p=None, dropout_sites=False) -> Trace:
    """Run ``model`` once on ``ids`` and record every value (and, with
    ``targets``, every gradient of the loss). A GPT takes ids (B, T) or (T,)
    and targets of the same shape (−100 = no target there); a Transformer
    takes ``(src_ids, tgt_in_ids)`` and ``targets=tgt_out_ids`` (pad = no target).
    The model is traced in evaluation mode, or with ``train`` in training mode
    (dropout drawn from ``default_rng(seed)``, with probability ``p`` in place
    of the modules' own if given), and left as it was."""
    from ..models.base import LanguageModel

    if not isinstance(model, LanguageModel):
        raise ScratchError(f"trace reads a language model (a GPT or a Transformer, a Llama …), not a {type(model).__name__}")
    if not model.trace_names:
        raise ScratchError(f"a {model.title} names nothing it computes (no trace_names): it cannot be traced")
    if p is not None and not 0 <= p < 1:
        raise ScratchError(f"dropout probability p must be in [0, 1), got {p}")
    if model.is_encoder_decoder:
        if not isinstance(ids, (tuple, list)) or len(ids) != 2:
            raise ScratchError(f"a {model.title} is traced on a pair: trace(model, (src_ids, tgt_in_ids), "
                               "targets=...)")
        inputs = (_ids(ids[0], "src_ids"), _ids(ids[1], "tgt_in_ids"))
        out_shape = inputs[1].shape
    else:
        inputs = _ids(ids, "ids")
        out_shape = inputs.shape
    if targets is not None:
        targets = _ids(targets, "targets")
        if targets.shape != out_shape:
            raise ScratchError(f"targets have shape {targets.shape}, the output {out_shape}")
    if tape.active is not None:
        raise ScratchError("this thread is already recording a trace")

    rec = _Recorder(model, want_grads=targets is not None, train=train, p=p, dropout_sites=dropout_sites,
                    rng=xp.random.default_rng(seed) if train else None)
    tape.active = rec
    try:
        with enable_grad() if targets is not None else no_grad():
            loss = model.traced_pass(inputs, targets)
    finally:
        tape.active = None

    param_store = {}
    if loss is not None:
        loss.backward(leaf_grads=param_store, retain=rec.retain)

    values, grads = {}, ({} if loss is not None else None)
    for path, v in rec.values.items():
        name = model.public_name(path)
        if name is None or name in values:
            continue
        values[name] = v.data if isinstance(v, Tensor) else v
        if grads is not None:
            g = rec.retain.get(id(v)) if isinstance(v, Tensor) else rec.inner_grads.get(path)
            if g is None:  # the backward pass never reached it: a bug to report, not zeros to show
                raise RuntimeError(f"trace: {name} ({path}) was recorded but the backward pass gave it no "
                                   "gradient")
            grads[name] = g
        if name == "logits":
            _add_probs(values, grads, targets, model.ignore_index)
    param_grads = None
    if loss is not None:
        param_grads = {}
        for name, prm in _all_param_names(model).items():
            g = param_store.get(id(prm))
            if g is None:
                raise RuntimeError(f"trace: the backward pass gave parameter {name} no gradient")
            param_grads[name] = g
    return Trace(model.kind, values, grads, param_grads, None if loss is None else float(loss.item()), inputs,
                 targets, train=train, seed=seed if train else None, p=p)


def _add_probs(values, grads, targets, ignore):
    """probs = softmax(logits); its gradient by the engine's backward of −mean log probs[target]."""
    logits = values["logits"]
    with no_grad():
        values["probs"] = F.softmax(Tensor(logits)).data
    if grads is None:
        return
    V = logits.shape[-1]
    with enable_grad():
        p = Tensor(values["probs"], requires_grad=True)
        t = targets.reshape(-1)
        rows = np.flatnonzero(t != ignore)
        if len(rows) == 0:
            grads["probs"] = np.zeros_like(values["probs"])
            return
        picked = F.log(p.reshape(-1, V)[rows, t[rows]])  # (N,) log p of each target
        nll = picked.sum() * p.dtype.type(-1.0 / len(rows))
        nll.backward()
    grads["probs"] = p.grad
