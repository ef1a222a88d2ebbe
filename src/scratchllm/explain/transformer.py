"""A translation worked out: the source pieces, the output built token by token
(greedy), and for each output token the cross-attention weights over the
source pieces — which piece of the source it looked at; with a position, one
head's cross-attention for that output token written out term by term (the
same arithmetic ``explain gpt`` prints for self-attention).

The weights are the model's own, read from :func:`scratchllm.explain.trace`
of one teacher-forced pass over the greedy output (the same computation the
step-by-step decoder did, all positions at once).
"""
from __future__ import annotations

import numpy as np

from ..errors import ScratchError
from ..translate import greedy_decode, special_ids
from .gpt import attention_arithmetic
from .trace import trace


def _piece(tokenizer, i) -> str:
    return repr(tokenizer.decode([int(i)]))


def greedy_output(model, tokenizer, src):
    """The greedy translation of ``src`` (ids): (its ids, the output tokens with the EOS that ended
    it, the BOS id); the decoder's input for a teacher-forced pass over it is [BOS] + output[:-1]."""
    _, bos, eos = special_ids(tokenizer)
    longest = min(model.config.max_len - 1, 2 * len(src) + 10)
    hyp = greedy_decode(model, [list(src)], bos, eos, max_len=longest)[0]
    return hyp, (hyp + [eos] if len(hyp) < longest else hyp), bos


def explain_transformer(model, tokenizer, src_ids, layer=None, head=None, position=None, full=False,
                        source="") -> str:
    """The printout of ``scratchllm explain transformer`` for source token ids ``src_ids``;
    ``position`` (an output step) adds head ``head`` (default 0) of ``layer`` worked out."""
    cfg = model.config
    src = list(src_ids)
    hyp, produced, bos = greedy_output(model, tokenizer, src)
    if position is not None and position >= len(produced):
        raise ScratchError(f"--position {position} is out of range: the translation has {len(produced)} tokens "
                           f"(--position 0 … {len(produced) - 1})")
    tr = trace(model, (np.array(src), np.array([bos] + produced[:-1])))
    L = cfg.n_decoder_layers - 1 if layer is None else layer
    weights = tr[f"dec.{L}.cross_attn.weights"][0].astype(np.float64)  # (H, T, S)
    shown = weights.mean(axis=0) if head is None else weights[head]  # (T, S)
    probs = tr["probs"][0]

    pieces = [_piece(tokenizer, i) for i in src]
    outs = [_piece(tokenizer, i) for i in produced]
    w = max(7, max(len(p) for p in pieces + outs) + 1)
    out = []
    say = out.append
    say(f"Transformer: {cfg.n_encoder_layers} encoder and {cfg.n_decoder_layers} decoder layers, {cfg.n_head} heads, "
        f"width {cfg.d_model}, vocabulary {cfg.tgt_vocab_size}" + (f"; checkpoint {source}" if source else "") + ".")
    say("")
    say(f"Step 1. The source sentence as the tokenizer's pieces ({len(src)}), each with its id; "
        "the encoder reads them all at once")
    say(f"    {'position':>8}  {'piece':<{w}}{'id':>7}")
    for s, (p, i) in enumerate(zip(pieces, src)):
        say(f"    {s:>8}  {p:<{w}}{int(i):>7}")
    say("")
    say("Step 2. The translation, one token at a time (greedy: the most likely next token, until <eos>); "
        "each step's decoder sees the source and the tokens so far")
    say(f"    {'step':>4}  {'token':<{w}}{'id':>7}{'probability':>14}")
    for t, (tok, i) in enumerate(zip(outs, produced)):
        say(f"    {t:>4}  {tok:<{w}}{int(i):>7}{float(probs[t, i]):>14.6f}")
    say(f"    translation: {tokenizer.decode(hyp).strip()}")
    say("")
    which = f"averaged over its {cfg.n_head} heads; --head for one" if head is None else f"head {head}"
    say(f"Step 3. Cross-attention in decoder layer {L} of {cfg.n_decoder_layers} ({which}): for each output token, "
        "the weight it gives each source piece (a row sums to 1)")
    say(f"    {'':>4}  {'token':<{w}}" + "".join(f"{s:>8}" for s in range(len(src))) + "   looked most at")
    for t, tok in enumerate(outs):
        row = shown[t]
        best = int(np.argmax(row))
        say(f"    {t:>4}  {tok:<{w}}" + "".join(f"{x:>8.4f}" for x in row) + f"   {pieces[best]} ({best})")
    if position is not None:
        out += _cross_attention_worked_out(tr, cfg, L, 0 if head is None else head, position, pieces, outs,
                                           tokenizer.decode([bos]) if position == 0 else None, w, full)
    return "\n".join(out)


def _cross_attention_worked_out(tr, cfg, layer, head, P, pieces, outs, bos_text, w, full):
    """Step 4: output step P's query against every source piece's key, in one head."""
    D = cfg.d_model // cfg.n_head
    fed = repr(bos_text) if P == 0 else outs[P - 1]
    site = f"dec.{layer}.cross_attn"
    out = ["", f"Step 4. Cross-attention worked out: decoder layer {layer}, head {head}, output step {P} "
               f"(--layer, --head, --position). The decoder, having read {fed} there, asks with its query "
               f"(from its own stream); every source piece answers with a key and a value (from the encoder's "
               f"output); the weighted sum of the values is what it brings back to write {outs[P]}"]
    out += attention_arithmetic(tr[f"{site}.q"][0, head, P], tr[f"{site}.k"][0, head], tr[f"{site}.v"][0, head],
                                tr[f"{site}.scores"][0, head, P], tr[f"{site}.weights"][0, head, P],
                                tr[f"{site}.y"][0, P, head * D:(head + 1) * D], head, f"step {P} {fed}", pieces,
                                w, full)
    return out
