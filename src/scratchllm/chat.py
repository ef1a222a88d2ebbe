"""A conversation with a language model, its tokens kept in the KV cache across turns.

Each turn the whole conversation is rendered again with the tokenizer's chat
template (the model was trained on exactly that text); the tokens it shares
with what the cache already holds are not run again, so a turn costs only its
new tokens. Sampling is ``generate``'s (temperature, top-k, top-p, one draw
per token from a seeded generator), and an answer ends at the model's
end-of-turn token, at ``max_new_tokens``, or when the context is full.

A model whose tokenizer has no chat template (one trained here on plain
text) sees the conversation as lines ``role: text`` and answers after
``assistant:``; its answer ends at the end of its line.
"""
from __future__ import annotations

import numpy as np

import time

from .errors import ScratchError
from .generate import check_sampling_args, sample_next
from .tensor import no_grad

__all__ = ["Chat"]


def _plain_template(messages, add_generation_prompt=True) -> str:
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant:" if add_generation_prompt else "")


class Chat:
    """``Chat(model, tokenizer).reply("Hi!", on_token=...)`` -> the answer's text."""

    def __init__(self, model, tokenizer, system=None, temperature=0.7, top_k=None, top_p=None, seed=None,
                 max_new_tokens=256):
        check_sampling_args(max_new_tokens, temperature, top_k, top_p)
        if getattr(model, "is_encoder_decoder", False) or not hasattr(model, "new_cache"):
            raise ScratchError(f"a {type(model).__name__} cannot chat: only a decoder-only language model "
                               "(GPT, Llama family) continues a conversation")
        self.model, self.tok, self.system = model, tokenizer, system
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.max_new_tokens = int(max_new_tokens)
        self.rng = np.random.default_rng(seed)
        self.templated = getattr(tokenizer, "chat_template", None) is not None
        self.stop_ids = self._stop_ids()
        self.reset()

    def _stop_ids(self) -> set:
        """The tokens that end an answer: the tokenizer's end-of-sequence and end-of-turn tokens."""
        stops = set()
        for attr in ("eos_token_id", "eos_id"):
            v = getattr(self.tok, attr, None)
            if isinstance(v, (int, np.integer)):
                stops.add(int(v))
        specials = getattr(self.tok, "special_tokens", None) or {}
        for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>"):
            if name in specials:
                stops.add(int(specials[name]))
        return stops

    def reset(self):
        """Forget the conversation (the system message stays) and empty the cache."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cache = self.model.new_cache(1)
        self.cached = []  # the token ids whose keys and values the cache holds, in order

    # ---- the prompt ----------------------------------------------------------------
    def prompt_ids(self) -> list:
        """The conversation so far as the model reads it, ending where the assistant's answer begins."""
        if self.templated:
            ids = self.tok.apply_chat_template(self.messages, add_generation_prompt=True)
        else:
            ids = self.tok.encode(_plain_template(self.messages))
        return [int(i) for i in ids]

    # ---- one turn --------------------------------------------------------------------
    def _feed(self, ids: list):
        """Run ``ids`` through the model after what the cache holds -> the last position's logits (V,)."""
        out = self.model(np.asarray([ids], dtype=np.int64), cache=self.cache)  # (1, n, V)
        self.cached.extend(ids)
        return np.asarray(out.data[0, -1], dtype=np.float64)

    def _rewind(self, ids: list) -> int:
        """Keep the cache's longest prefix shared with ``ids`` (at least one token of ``ids`` is left to run)."""
        n = 0
        for a, b in zip(self.cached, ids[:-1]):
            if a != b:
                break
            n += 1
        self.cached = self.cached[:n]
        self.cache.length = n  # later rows are overwritten as new tokens are written
        return n

    def reply(self, text: str, on_token=None) -> str:
        """Add the user's ``text``, sample the answer (``on_token(id)`` for each token as it comes), keep both.

        Ctrl-C (KeyboardInterrupt) while sampling ends the answer where it is; the part sampled is kept."""
        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        context = self.model.context_length
        if len(ids) >= context:
            self.messages.pop()
            raise ScratchError(f"the conversation is {len(ids)} tokens long, the model reads at most {context}: "
                               "start again (/reset)")
        answer, self.stopped = [], "length"
        with no_grad():
            t0 = time.perf_counter()
            start = self._rewind(ids)
            self.prompt_tokens = len(ids) - start  # run this turn; the rest came from the cache
            logits = self._feed(ids[start:])
            t1 = time.perf_counter()
            self.prefill_seconds = t1 - t0
            try:
                while len(answer) < self.max_new_tokens:
                    tok = int(sample_next(logits[None], self.temperature, self.top_k, self.top_p, self.rng)[0])
                    if tok in self.stop_ids:
                        self.stopped = "end"
                        break
                    line_end = not self.templated and "\n" in self.tok.decode([tok])
                    if line_end and self.tok.decode([tok]).startswith("\n"):
                        self.stopped = "end"
                        break
                    answer.append(tok)
                    if on_token is not None:
                        on_token(tok)
                    if line_end:
                        self.stopped = "end"
                        break
                    if len(self.cached) + 1 >= context:
                        self.stopped = "context"
                        break
                    logits = self._feed([tok])
            except KeyboardInterrupt:
                self.stopped = "interrupted"
        self.answer_seconds = time.perf_counter() - t1
        reply = self.tok.decode(answer).strip() if answer else ""
        self.messages.append({"role": "assistant", "content": reply})
        self.last_tokens = len(answer)
        return reply
