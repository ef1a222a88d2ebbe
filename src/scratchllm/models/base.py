"""What every language model answers, so that the layers above it (trace,
explain, explore, checkpoints, the command line, Hugging Face conversion) ask
the model instead of switching on its kind or matching its attribute names.

A family is then one model file that subclasses :class:`LanguageModel` plus
one conversion table under ``scratchllm.hf``.

Sizes are properties of the model (not of its config, whose field names are
the family's own: GPT-2's ``n_embd``, Llama's ``hidden_size``)::

    model.vocab_size       V, the rows of the output layer
    model.context_length   the longest sequence it reads (positions 0 … context_length − 1)
    model.n_layer          blocks (an encoder–decoder: decoder layers)
    model.n_head           query heads per attention
    model.n_kv_head        key/value heads (= n_head without grouped-query attention)
    model.head_dim         D, numbers per head
    model.n_embd           C, the width of the residual stream

Tracing: ``trace_names`` is a table of (regular expression, public name)
pairs, matched against the path under which a value was recorded (a module's
dotted path, or ``record()``'s name inside that module's scope); the first
pattern that matches the whole path gives the public name (``re.sub`` with
the replacement), a path that matches none is not shown.
"""
from __future__ import annotations

import re

from ..errors import ScratchError
from ..nn import Module, Parameter
from ..tensor import Tensor

# patterns shared by the tables of several families
ATTN_PARTS = r"(q|k|v|scores|weights|y)"  # what the attention op and record("y", …) hand a trace
DROP_PARTS = r"(in|mask|out)"  # what a Dropout module hands a trace


class LanguageModel(Module):
    """The interface; subclasses fill in what has no sensible default."""

    kind: str = ""  # the string stored in our checkpoints ("gpt", "transformer", "llama")
    trace_names: tuple = ()  # ((regex on a recorded path, public name), ...), first match wins
    is_encoder_decoder: bool = False  # True: called as model(src_ids, tgt_in_ids), traced on a pair

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def n_layer(self) -> int:
        raise NotImplementedError

    @property
    def n_head(self) -> int:
        raise NotImplementedError

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def n_embd(self) -> int:
        raise NotImplementedError

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def title(self) -> str:
        """The model's name in printed text ("GPT", "Transformer")."""
        return type(self).__name__

    # ---- the ends of the model ------------------------------------------------------------
    def token_embedding(self) -> Parameter:
        """(V, C): the table whose rows the (target) token ids pick."""
        raise NotImplementedError

    def unembedding(self) -> Parameter:
        """(V, C): the output layer's weight, logits = x · Wᵀ (the embedding itself when tied)."""
        raise NotImplementedError

    def final_norm(self, x: Tensor) -> Tensor:
        """The norm applied to the residual stream before the unembedding (the logit lens applies it
        to any layer's stream)."""
        raise NotImplementedError

    # ---- inference ----------------------------------------------------------------------------
    def new_cache(self, batch_size: int):
        """A key/value cache for ``batch_size`` rows, with ``.length`` (tokens stored so far)."""
        raise NotImplementedError

    # ---- saving -------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """The config as plain JSON data; ``from_config`` builds the same architecture from it."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, d: dict) -> "LanguageModel":
        raise NotImplementedError

    # ---- what trace and explain ask -------------------------------------------------------------
    @property
    def ignore_index(self) -> int:
        """The target id that means "no target here" in the loss."""
        return -100

    def traced_pass(self, inputs, targets=None):
        """One forward pass as a trace runs it: ``inputs`` ids (B, T) (an encoder–decoder: the pair
        (src (B, S), tgt_in (B, T))), ``targets`` (B, T) or None; returns the loss Tensor, or None
        without targets."""
        if targets is None:
            self(inputs)
            return None
        return self(inputs, targets)[1]

    def dropout_sites(self) -> dict:
        """{public site name in a trace: what enters that Dropout}, in the order of the forward pass;
        empty for a model without dropout."""
        return {}

    def public_name(self, path: str):
        """The documented name of a value recorded under ``path``, or None for values not shown
        (packed projections, a module's output that another name holds)."""
        for pattern, repl in _compiled(type(self)):
            if pattern.match(path):
                return pattern.sub(repl, path)
        return None


_TABLES: dict = {}  # class -> its trace_names compiled


def _compiled(cls) -> list:
    table = _TABLES.get(cls)
    if table is None:
        if not cls.trace_names:
            raise ScratchError(f"a {cls.__name__} names nothing it computes (no trace_names): it cannot be traced")
        table = _TABLES[cls] = [(re.compile(p + "$"), r) for p, r in cls.trace_names]
    return table
