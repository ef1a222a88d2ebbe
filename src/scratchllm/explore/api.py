"""What the explore page asks for, as plain dicts ready for JSON.

An :class:`Explorer` holds one checkpoint's model and tokenizer. Every method
takes the request's fields (already parsed from JSON), checks them, and
returns numbers taken from the model: the next-token distribution from a
plain forward pass filtered by the sampler's own functions
(:mod:`scratchllm.generate`), and attention, the inside of each block and the
backward pass from :func:`scratchllm.explain.trace` — the same numbers the
terminal's ``scratchllm explain`` prints, never recomputed here.

Requests run in threads. Traces and forward passes take turns (a lock);
generation runs beside them, with its own key/value cache, leaving the model
in the eval mode it was loaded in; "take one step" changes a deep copy. So
the checkpoint and the model serving other requests never change.

A run with snapshots (``scratchllm train --snapshots N``) can be seen at any
of its kept steps: every view takes an optional ``step`` and answers from a
copy of the model holding that snapshot's weights (the last few copies are
kept), so the page's step slider moves every view through training.
"""
from __future__ import annotations

import copy
import json
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import checkpoint
from ..errors import ScratchError
from ..tensor import no_grad

MAX_CHARS = 2000  # longest text a request may carry
MAX_NEW_TOKENS = 500
TOP = 20  # candidates shown in the next-token chart


class _PassLock:
    """The lock model passes take turns under, holding BLAS to one thread meanwhile: the page's
    products are small ((T ≤ context) × width), and on a busy 2-core machine BLAS's second thread
    waits for a core, so one pass took ~600 ms on 2 threads and ~10 ms on 1 (see PERFORMANCE.md)."""

    def __init__(self):
        self._lock = threading.RLock()  # a pass over every snapshot holds it around passes that take it too
        self._depth = 0
        self._limit = None
        try:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()  # numpy (and its BLAS) is loaded by now
        except ImportError:
            self._blas = None

    def __enter__(self):
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._blas is not None:
            self._limit = self._blas.limit(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None
        self._lock.release()


class BadRequest(ScratchError):
    """A request the page (or a person with curl) got wrong: answered with 400 and this message."""


# ---- request fields ------------------------------------------------------------------
def text_field(body: dict, name: str = "text", required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    if len(value) > MAX_CHARS:
        raise BadRequest(f"'{name}' is {len(value)} characters long; at most {MAX_CHARS} are accepted")
    if required and not value:
        raise BadRequest(f"'{name}' is empty: type some text")
    return value


def number_field(body: dict, name: str, kind=float, lo=None, hi=None, default=None, optional=False):
    """A number within [lo, hi] (JSON number or numeric string); absent or null gives ``default``,
    or None when ``optional``."""
    value = body.get(name)
    if value is None or value == "":
        if default is None and not optional:
            raise BadRequest(f"'{name}' is missing")
        return default
    what = "a whole number" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"'{name}' must be {what}")
    try:
        x = float(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be {what}, not {value!r}") from None
    if not math.isfinite(x) or (kind is int and x != int(x)):
        raise BadRequest(f"'{name}' must be {what}, not {value!r}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, not {value!r}")
    return int(x) if kind is int else x


def rounded(a, digits=6):
    """An array as nested lists of short floats; −inf, +inf and NaN become None (JSON has no infinity)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.round(a, digits).astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


class Explorer:
    def __init__(self, ckpt):
        from ..models.base import LanguageModel

        self.path = Path(ckpt)
        self.ckpt_dir = checkpoint.locate(ckpt)  # the checkpoint's directory (or a GGUF file)
        self.model, _ = checkpoint.open_model(self.ckpt_dir, tokenizer=False)
        if not isinstance(self.model, LanguageModel):
            raise ScratchError(f"{ckpt} holds a {getattr(self.model, 'kind', type(self.model).__name__)} model; "
                               "explore shows GPT and Transformer checkpoints")
        self.model.eval()
        self.tokenizer = checkpoint.load_tokenizer(self.ckpt_dir)
        self.kind = self.model.kind
        self.encoder_decoder = self.model.is_encoder_decoder  # the page shows translation, not the next token
        self.lock = _PassLock()  # one trace, forward or copy of the model at a time
        self._traces: OrderedDict = OrderedDict()  # (step, inputs, targets) -> Trace, the last few
        self._models: OrderedDict = OrderedDict()  # step -> a copy of the model with that snapshot's weights
        self._memo: dict = {}  # answers over all snapshots (head scores, embedding maps), computed once
        self.run_dir, self.snapshots = self._find_snapshots()
        if self.encoder_decoder:
            from ..translate import special_ids

            self.pad_id, self.bos_id, self.eos_id = special_ids(self.tokenizer)

    # ---- what the page shows first -----------------------------------------------------
    def info(self, body: dict | None = None) -> dict:
        params = {n: list(p.shape) for n, p in self.model.named_parameters()}
        return {
            "kind": self.kind,
            "title": self.model.title,
            "decoder_only": not self.encoder_decoder,
            "checkpoint": str(self.ckpt_dir),
            "config": {k: v for k, v in self.model.config_dict().items() if isinstance(v, (int, float, str, bool))},
            "parameters": int(sum(int(np.prod(s)) for s in params.values())),
            "vocab_size": self.vocab_size,
            "context": self.context,
            "layers": self.n_layers,
            "heads": self.model.n_head,
            "kv_heads": self.model.n_kv_head,
            "llama": self.kind == "llama",  # RMSNorm, RoPE, GQA, SwiGLU: the page offers its "Llama parts" view
            "width": self.model.n_embd,
            "has_run": self.log_path() is not None,
            "snapshots": self.snapshots,  # the steps the slider offers; empty: no slider
            "max_chars": MAX_CHARS,
            "default_text": self.default_text(),
        }

    def default_text(self) -> str:
        """A text the tokenizer can encode, to start with: a line of Shakespeare, else the start of the
        run's validation tokens, else the first tokens of the vocabulary."""
        for text in ("To be or not to be", "The cat sat on the mat"):
            try:
                if self.encoder_decoder or len(self.encode(text)) < self.context:
                    return text
            except BadRequest:
                pass
        from ..data.token_bin import read_token_bin

        for d in (self.path, self.ckpt_dir.parent):
            if (d / "val.bin").is_file():
                try:
                    ids = read_token_bin(d / "val.bin")[:min(24, self.context - 1)]
                    return self.tokenizer.decode([int(i) for i in ids])
                except (ScratchError, OSError, ValueError):
                    pass
        return self.tokenizer.decode(list(range(min(8, self.vocab_size))))

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def context(self) -> int:
        return self.model.context_length

    @property
    def n_layers(self) -> int:
        return self.model.n_layer

    # ---- snapshots: the model at a step of its training ------------------------------------
    def _find_snapshots(self):
        """(run directory, [steps]) of the run's snapshots, or (None, []) for a model without them
        (an imported one, or a run trained with --snapshots 0)."""
        from ..snapshots import list_snapshots

        if self.ckpt_dir.is_dir():
            for d in (self.path, self.ckpt_dir.parent):
                found = list_snapshots(d)
                if found:
                    return d, list(found)
        return None, []

    def _step_field(self, body) -> int | None:
        """The request's ``step`` (a snapshot's), or None: the model as its checkpoint holds it."""
        step = number_field(body, "step", int, optional=True)  # any whole number: the snapshots say which exist
        if step is not None and step not in self.snapshots:
            have = ", ".join(map(str, self.snapshots)) if self.snapshots else "none"
            raise BadRequest(f"this run has no snapshot of step {step} (its snapshots: {have})")
        return step

    def model_at(self, step: int | None):
        """The model with the weights of snapshot ``step`` (None: the checkpoint's own): a copy,
        loaded once and kept among the last few, so the checkpoint's model is never changed."""
        from ..snapshots import read_snapshot

        if step is None:
            return self.model
        with self.lock:
            if step in self._models:
                self._models.move_to_end(step)
                return self._models[step]
            model = copy.deepcopy(self.model)
        model.load_state_dict(read_snapshot(self.run_dir, step))
        with self.lock:
            self._models[step] = model
            while len(self._models) > 4:
                self._models.popitem(last=False)
        return model

    def _each_snapshot(self):
        """(step, model) for every snapshot, one scratch copy whose weights change from step to step."""
        from ..snapshots import read_snapshot

        with self.lock:
            model = copy.deepcopy(self.model)
        for step in self.snapshots:
            model.load_state_dict(read_snapshot(self.run_dir, step))
            yield step, model

    def _need_snapshots(self):
        if not self.snapshots:
            raise BadRequest("this model has no snapshots: train it with scratchllm train --snapshots N to watch it learn")

    # ---- text -> tokens ---------------------------------------------------------------
    def piece(self, i: int) -> str:
        """A token's text; a byte-level token holding part of a UTF-8 character shows its bytes (\\xf0)."""
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.tokenizer.decode_bytes([int(i)]).decode("utf-8", "backslashreplace")
        return self.tokenizer.decode([int(i)])

    def whole_text(self, i: int) -> str | None:
        """The token's text when it is whole characters (it can be appended to a text), else None."""
        if hasattr(self.tokenizer, "decode_bytes"):
            try:
                return self.tokenizer.decode_bytes([int(i)]).decode("utf-8")
            except UnicodeDecodeError:
                return None
        return self.tokenizer.decode([int(i)])

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        try:
            if hasattr(self.tokenizer, "special_tokens"):
                ids = self.tokenizer.encode(text, disallowed_special=())  # "<|endoftext|>" typed is plain text
            else:
                ids = self.tokenizer.encode(text)
        except ScratchError as e:
            raise BadRequest(str(e)) from None
        except (KeyError, ValueError) as e:
            raise BadRequest(f"the model's tokenizer cannot encode this text ({e})") from None
        if not ids:
            raise BadRequest("the text gives no tokens: type some text")
        limit = limit or self.context
        if len(ids) > limit:
            raise BadRequest(f"the text is {len(ids)} tokens long; the model reads at most {limit}")
        if max(ids) >= self.vocab_size:
            raise BadRequest(f"the tokenizer gives id {max(ids)} but the model knows {self.vocab_size} tokens")
        return list(ids)

    def tokens_of(self, ids) -> list[dict]:
        return [{"id": int(i), "piece": self.piece(i)} for i in ids]

    def tokens(self, body: dict) -> dict:
        ids = self.encode(text_field(body))
        return {"tokens": self.tokens_of(ids)}

    # ---- the next token -------------------------------------------------------------------
    def _gpt_only(self):
        if self.encoder_decoder:
            raise BadRequest("this view needs a GPT checkpoint; this one translates (see the Translation view)")

    def _logits(self, ids, step=None) -> np.ndarray:
        model = self.model_at(step)
        with self.lock, no_grad():
            out = model(np.asarray([ids], dtype=np.int64))  # (1, T, V)
        return np.asarray(out.data[0], dtype=np.float64)  # (T, V)

    def next_token(self, body: dict) -> dict:
        """The distribution the sampler draws the next token from, at these settings."""
        from ..generate import probabilities, top_k_filter, top_p_filter

        self._gpt_only()
        text = text_field(body)
        temperature = number_field(body, "temperature", float, 0, 100, default=1.0)
        top_k = number_field(body, "top_k", int, 1, self.vocab_size, optional=True)
        top_p = number_field(body, "top_p", float, 1e-9, 1, optional=True)
        step = self._step_field(body)
        ids = self.encode(text)
        all_logits = self._logits(ids, step)  # (T, V)
        logits = all_logits[-1]
        p_model = probabilities(logits)  # temperature 1, nothing cut
        # the loss at each token of the text: −log p(token t | the tokens before it), t ≥ 1
        p_all = probabilities(all_logits)  # (T, V)
        token_loss = -np.log(np.maximum(p_all[np.arange(len(ids) - 1), ids[1:]], 1e-300))
        if temperature == 0:  # greedy: all the mass on the most likely token
            z = np.full_like(logits, -np.inf)
            z[np.argmax(logits)] = 0.0
            p_temp = p_final = probabilities(z)
        else:
            z = logits / temperature  # as generate.sample_next
            p_temp = probabilities(z)
            if top_k is not None:
                z = top_k_filter(z, top_k)
            if top_p is not None:
                z = top_p_filter(z, top_p)
            p_final = probabilities(z)
        order = np.argsort(-p_temp, kind="stable")[:TOP]
        return {
            "tokens": self.tokens_of(ids), "step": step,
            "token_loss": rounded(token_loss, 6),  # (T − 1,): position t + 1's loss
            "settings": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
            "kept": int((p_final > 0).sum()),
            "candidates": [{"id": int(i), "piece": self.piece(i), "append": self.whole_text(i),
                            "logit": round(float(logits[i]), 6),
                            "p_model": round(float(p_model[i]), 8), "p_temperature": round(float(p_temp[i]), 8),
                            "p": round(float(p_final[i]), 8), "kept": bool(p_final[i] > 0)} for i in order],
        }

    def generate(self, body: dict, emit) -> None:
        """Sample a continuation, calling ``emit({"id", "piece", "text"})`` for each new token as it comes,
        then ``emit({"done": True})``. ``text`` is what the token adds to the text (a byte-level token
        holding part of a UTF-8 character adds it when the character is whole)."""
        import codecs

        from ..generate import check_sampling_args, generate

        self._gpt_only()
        text = text_field(body)
        n = number_field(body, "max_new_tokens", int, 1, MAX_NEW_TOKENS, default=100)
        temperature = number_field(body, "temperature", float, 0, 100, default=1.0)
        top_k = number_field(body, "top_k", int, 1, self.vocab_size, optional=True)
        top_p = number_field(body, "top_p", float, 1e-9, 1, optional=True)
        seed = number_field(body, "seed", int, 0, 2**32 - 1, optional=True)
        model = self.model_at(self._step_field(body))
        check_sampling_args(n, temperature, top_k, top_p)
        ids = self.encode(text)
        byte_level = hasattr(self.tokenizer, "decode_bytes")
        decoder = codecs.getincrementaldecoder("utf-8")("replace") if byte_level else None

        def on_token(tok):
            i = int(tok[0])
            added = decoder.decode(self.tokenizer.decode_bytes([i])) if byte_level else self.piece(i)
            emit({"id": i, "piece": self.piece(i), "text": added})

        # not under the lock, so the other views stay live while text streams: generation keeps its
        # keys and values in a cache of its own and leaves the model (already in eval mode) as it was
        generate(model, np.asarray([ids]), n, temperature=temperature, top_k=top_k, top_p=top_p,
                 seed=seed, on_token=on_token)
        if byte_level:
            tail = decoder.decode(b"", final=True)
            if tail:
                emit({"id": None, "piece": "", "text": tail})
        emit({"done": True})

    # ---- embeddings -------------------------------------------------------------------
    def _embedding_table(self, step=None) -> np.ndarray:
        return np.asarray(self.model_at(step).token_embedding().data, dtype=np.float64)

    def _aligned_maps(self, limit: int) -> dict:
        """Every snapshot's embeddings map, each turned onto the one before (dynamics' Procrustes);
        computed once, under the lock (so with BLAS on one thread)."""
        from ..explain.dynamics import embedding_maps

        key = ("maps", limit)
        with self.lock:
            if key not in self._memo:
                tables = {s: np.asarray(m.token_embedding().data[:limit], dtype=np.float64)
                          for s, m in self._each_snapshot()}
                maps = embedding_maps(tables)
                self._memo[key] = {int(s): xy for s, xy in zip(maps["steps"], maps["xy"])}
        return self._memo[key]

    def embeddings(self, body: dict) -> dict:
        """The token embedding rows projected on their two principal directions."""
        limit = number_field(body, "limit", int, 2, 50_000, default=2000)
        step = self._step_field(body)
        W = self._embedding_table(step)  # (V, C)
        W = W[:limit]
        X = W - W.mean(axis=0)
        cov = X.T @ X / max(len(X) - 1, 1)  # (C, C)
        vals, vecs = np.linalg.eigh(cov)  # ascending
        top = vecs[:, ::-1][:, :2]  # (C, 2) the two directions of largest variance
        xy = X @ top  # (N, 2)
        if step is not None:  # the same plane, turned to follow the snapshots before it (no flips)
            xy = self._aligned_maps(limit)[step]
        total = float(vals.sum()) or 1.0
        return {"ids": list(range(len(W))), "pieces": [self.piece(i) for i in range(len(W))],
                "x": rounded(xy[:, 0], 5), "y": rounded(xy[:, 1], 5), "step": step, "aligned": step is not None,
                "explained": [round(float(v) / total, 4) for v in vals[::-1][:2]], "vocab_size": self.vocab_size}

    def neighbours(self, body: dict) -> dict:
        """The tokens whose embedding rows point most nearly the same way (cosine similarity)."""
        i = number_field(body, "id", int, 0, self.vocab_size - 1)
        k = number_field(body, "k", int, 1, 50, default=10)
        W = self._embedding_table(self._step_field(body))
        unit = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit[i]  # (V,)
        sim[i] = -np.inf
        order = np.argsort(-sim, kind="stable")[:k]
        return {"id": i, "piece": self.piece(i),
                "neighbours": [{"id": int(j), "piece": self.piece(j), "cosine": round(float(sim[j]), 5)} for j in order]}

    # ---- the run -------------------------------------------------------------------
    def log_path(self) -> Path | None:
        for d in (self.path, self.ckpt_dir.parent, self.ckpt_dir):
            if (d / "log.jsonl").is_file():
                return d / "log.jsonl"
        return None

    def run(self, body: dict) -> dict:
        """The run's log.jsonl as it is now (a line still being written is left for next time)."""
        path = self.log_path()
        if path is None:
            return {"records": [], "path": None}
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict):
                records.append({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()})
        return {"records": records, "path": str(path), "schedule": self.schedule(records)}

    def schedule(self, records=()) -> dict | None:
        """The learning rate at every step of the run, from the schedule function itself and the
        settings in its train_state.json (not sampled at evaluations, so a warmup of 100 steps is 100)."""
        from ..optim import cosine_with_warmup, inverse_sqrt_lr, linear_decay_lr

        if not self.ckpt_dir.is_dir():
            return None
        # beside the weights, or (a translation run's model/) in the run's ckpt/
        state = next((d / "train_state.json" for d in (self.ckpt_dir, self.ckpt_dir.parent / "ckpt")
                      if (d / "train_state.json").is_file()), None)
        if state is None:
            return None
        try:
            saved = json.loads(state.read_text())
            cfg = saved.get("train_config") or {}
        except (json.JSONDecodeError, OSError):
            return None
        last = max([r["step"] for r in records if isinstance(r.get("step"), int)], default=0)
        if "warmup_iters" in cfg:  # a GPT run: warmup then a half cosine over lr_decay_iters
            total = int(cfg.get("max_iters") or last)
            decay = int(cfg.get("lr_decay_iters") or total)
            lr_at = lambda s: cosine_with_warmup(s, cfg["lr"], cfg["min_lr"], cfg["warmup_iters"], decay)  # noqa: E731
            name = f"linear warmup over {cfg['warmup_iters']} steps, then cosine to {cfg['min_lr']:g} at step {decay}"
        elif cfg.get("schedule") == "linear" and saved.get("schedule_steps"):
            # a translation run planned to the end of its epochs: every step's rate, from the schedule
            total = int(saved["schedule_steps"])
            lr_at = lambda s: linear_decay_lr(s, s / total, cfg["lr"], cfg["warmup_steps"])  # noqa: E731
            name = f"linear warmup over {cfg['warmup_steps']} steps, then a straight line down to 0 at step {total}"
        elif cfg.get("schedule", "inverse-sqrt") != "inverse-sqrt" and "warmup_steps" in cfg:
            # a translation run planned to its --minutes: the rates it logged (they follow its clock)
            logged = sorted((r["step"] - 1, r["lr"]) for r in records
                            if r.get("kind") == "train" and isinstance(r.get("step"), int) and "lr" in r)
            if not logged:
                return None
            return {"steps": [s for s, _ in logged], "lr": [lr for _, lr in logged],
                    "what": f"linear warmup over {cfg['warmup_steps']} steps, then a straight line down to 0 at the "
                            f"run's end (the rates the run logged, every {cfg.get('log_interval', 1)} steps)"}
        elif "warmup_steps" in cfg:  # a translation run: warmup then 1/√step, no total length
            total = max(last, int(cfg.get("max_steps") or 0))
            lr_at = lambda s: inverse_sqrt_lr(s, cfg["lr"], cfg["warmup_steps"])  # noqa: E731
            name = f"linear warmup over {cfg['warmup_steps']} steps, then lr·√(warmup/step)"
        else:
            return None
        total = max(total, last, 1)
        stride = max(1, -(-total // 4000))  # at most ~4000 points; every step of a shorter run
        warmup = int(cfg.get("warmup_iters", cfg.get("warmup_steps", 0)))
        steps = sorted(set(range(0, total + 1, stride)) | set(range(min(total, warmup) + 1)))  # the warmup whole
        return {"steps": steps, "lr": [lr_at(s) for s in steps], "what": name}

    # ---- the trace: attention, inside a block, backward --------------------------------------
    def _trace(self, inputs, targets=None, step=None):
        """The trace of one pass at a snapshot's step (cached: the page asks several views of the same text)."""
        from ..explain import trace

        key = (step, repr(inputs), None if targets is None else repr(targets))
        model = self.model_at(step)
        with self.lock:
            if key in self._traces:
                self._traces.move_to_end(key)
                return self._traces[key]
            tr = trace(model, inputs, targets=targets)
            self._traces[key] = tr
            while len(self._traces) > 4:
                self._traces.popitem(last=False)
            return tr

    def _layer_field(self, body):
        return number_field(body, "layer", int, 0, self.n_layers - 1, default=0)

    def attention(self, body: dict) -> dict:
        """One layer's attention: every head's weights and scaled scores, query × key."""
        self._gpt_only()
        ids = self.encode(text_field(body))
        layer = self._layer_field(body)
        step = self._step_field(body)
        tr = self._trace(np.asarray([ids], dtype=np.int64), step=step)
        return {"tokens": self.tokens_of(ids), "layer": layer, "step": step,
                "weights": rounded(tr[f"h.{layer}.attn.weights"][0]),  # (H, T, T)
                "scores": rounded(tr[f"h.{layer}.attn.scores"][0], 5)}  # (H, T, T), masked -> null

    def block(self, body: dict) -> dict:
        """Per layer and token: the residual stream's size, the layer norms' input mean and std; one layer's MLP."""
        self._gpt_only()
        ids = self.encode(text_field(body))
        layer = self._layer_field(body)
        step = self._step_field(body)
        tr = self._trace(np.asarray([ids], dtype=np.int64), step=step)
        layers = []
        for i in range(self.n_layers):
            stream_in = tr[f"h.{i - 1}.resid_2"][0] if i else tr["emb"][0]  # (T, C) what enters block i
            resid_1 = tr[f"h.{i}.resid_1"][0]
            resid_2 = tr[f"h.{i}.resid_2"][0]
            layers.append({
                "norm_in": rounded(np.linalg.norm(stream_in, axis=-1), 4),
                "norm_mid": rounded(np.linalg.norm(resid_1, axis=-1), 4),
                "norm_out": rounded(np.linalg.norm(resid_2, axis=-1), 4),
                "ln_1_mean": rounded(stream_in.mean(-1), 5), "ln_1_std": rounded(stream_in.std(-1), 5),
                "ln_2_mean": rounded(resid_1.mean(-1), 5), "ln_2_std": rounded(resid_1.std(-1), 5),
            })
        # the MLP's hidden layer: GELU's output (a GPT), or silu(gate) × up (a gated, SwiGLU MLP)
        gelu = f"h.{layer}.mlp.gelu" in tr
        hidden = rounded(tr[f"h.{layer}.mlp.gelu" if gelu else f"h.{layer}.mlp.prod"][0], 4)  # (T, hidden width)
        return {"tokens": self.tokens_of(ids), "layer": layer, "layers": layers, "step": step,
                "mlp": hidden, "mlp_label": "after GELU" if gelu else "silu(gate) × up",
                **({"gelu": hidden} if gelu else {})}

    def _targets(self, body, ids):
        """(inputs, targets, where): the text's own next tokens, or one chosen token after the text."""
        target = body.get("target")
        if target is None or target == "":
            if len(ids) < 2:
                raise BadRequest("the text has one token: give a target token, or a longer text")
            return ids[:-1], ids[1:], "the text's own next tokens"
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise BadRequest("'target' must be a token id or a piece of text")
        if isinstance(target, int):
            t = number_field(body, "target", int, 0, self.vocab_size - 1)
        else:
            t_ids = self.encode(text_field(body, "target"))
            if len(t_ids) != 1:
                raise BadRequest(f"the target {target!r} is {len(t_ids)} tokens; give one token")
            t = t_ids[0]
        return ids, [-100] * (len(ids) - 1) + [t], f"{self.piece(t)!r} after the text"

    def backward(self, body: dict) -> dict:
        """The loss and its gradients: per layer and token, on the attention weights, on the parameters."""
        self._gpt_only()
        ids = self.encode(text_field(body))
        layer = self._layer_field(body)
        inputs, targets, what = self._targets(body, ids)
        x = np.asarray([inputs], dtype=np.int64)
        y = np.asarray([targets], dtype=np.int64)
        step = self._step_field(body)
        model = self.model_at(step)
        tr = self._trace(x, y, step)
        grid = [rounded(np.linalg.norm(tr.grad(f"h.{i}.resid_2")[0], axis=-1), 7) for i in range(self.n_layers)]
        emb = rounded(np.linalg.norm(tr.grad("tok_emb")[0], axis=-1), 7)
        params = []
        for name, p in model.named_parameters():
            g = tr.grad(name)
            params.append({"name": name, "shape": list(p.shape), "grad_norm": float(np.linalg.norm(g)),
                           "weight_norm": float(np.linalg.norm(p.data))})
        params.sort(key=lambda r: -r["grad_norm"])
        for r in params:
            r["grad_norm"], r["weight_norm"] = round(r["grad_norm"], 8), round(r["weight_norm"], 6)
        return {"tokens": self.tokens_of(inputs), "targets": [None if t < 0 else self.tokens_of([t])[0] for t in targets],
                "what": what, "loss": float(tr.loss), "layer": layer, "step": step,
                "grad_stream": grid,  # (L, T): |d loss / d residual stream after block i| per token
                "grad_embedding": emb,  # (T,)
                "grad_attn_weights": rounded(tr.grad(f"h.{layer}.attn.weights")[0], 8),  # (H, T, T)
                "params": params[:15], "n_params": len(params)}

    def step(self, body: dict) -> dict:
        """One SGD step on a copy of the model: the loss and the targets' probabilities before and after,
        and the loss after a step of each learning rate of a scan (the curve). Without 'lr', the step
        takes the scan's choice (:func:`scratchllm.explain.step.chosen_lr`), which lowers the loss."""
        from ..explain.step import chosen_lr, loss_curve, step_copy, verdict
        from ..generate import probabilities

        self._gpt_only()
        ids = self.encode(text_field(body))
        lr = number_field(body, "lr", float, 0, 1000, optional=True)
        if lr == 0:
            raise BadRequest("'lr' must be above 0")
        inputs, targets, what = self._targets(body, ids)
        x = np.asarray([inputs], dtype=np.int64)
        y = np.asarray([targets], dtype=np.int64)
        step = self._step_field(body)
        before = self._trace(x, y, step)
        start = self.model_at(step)
        with self.lock:
            model = copy.deepcopy(start)  # the checkpoint's model (and the snapshot's copy) is never changed
        loss_of = lambda m: m(x, y)[1]  # noqa: E731
        curve = loss_curve(model, loss_of, extra=() if lr is None else (lr,))
        chosen = lr is None
        lr = chosen_lr(curve) if chosen else lr
        model = step_copy(model, loss_of, lr)
        with no_grad():
            logits_after, loss_after = model(x, y)
        p_before = np.asarray(before["probs"][0], dtype=np.float64)  # (T, V)
        p_after = probabilities(logits_after.data[0])  # (T, V)
        rows = [t for t, v in enumerate(targets) if v >= 0]
        after = float(loss_after.data)
        return {"what": what, "lr": lr, "lr_chosen": chosen, "step": step, "loss_before": float(before.loss),
                "loss_after": after if math.isfinite(after) else None,  # a step far too long: not a number
                "curve": curve.as_dict(),
                "verdict": " ".join(line.strip() for line in verdict(curve, lr)).replace(", or leave --lr out", ""),
                "targets": [{"position": t, "id": int(targets[t]), "piece": self.piece(targets[t]),
                             "p_before": round(float(p_before[t, targets[t]]), 8),
                             "p_after": round(float(p_after[t, targets[t]]), 8)} for t in rows]}

    # ---- what a Llama adds to the GPT: RMSNorm, RoPE, GQA, SwiGLU ----------------------------------
    def llama(self, body: dict) -> dict:
        """The four changes of a Llama-family model, as :mod:`scratchllm.explain.llama`'s views give them
        (the model's own numbers from the trace, the arithmetic redone beside them): one token's RMSNorm
        (``norm`` of ``layer``), RoPE for query ``position`` and key ``key_position`` of ``head`` (and both
        moved by ``shift``), which query heads share each key/value head, one token's SwiGLU."""
        from ..explain.llama import NORMS, gqa_view, plain, rmsnorm_view, rope_view, swiglu_view

        if self.kind != "llama":
            raise BadRequest("this view needs a Llama-family checkpoint (Llama, Mistral, Qwen, SmolLM2); "
                             f"this one is a {self.kind}")
        ids = self.encode(text_field(body))
        T = len(ids)
        layer = self._layer_field(body)
        head = number_field(body, "head", int, 0, self.model.n_head - 1, default=0)
        position = number_field(body, "position", int, 0, T - 1, optional=True)
        position = T - 1 if position is None else position
        key = number_field(body, "key_position", int, 0, position, default=0)
        shift = number_field(body, "shift", int, -self.context, self.context, optional=True)
        norm = body.get("norm") or "ln_1"
        if norm not in NORMS:
            raise BadRequest(f"'norm' must be one of {', '.join(NORMS)}, not {norm!r}")
        step = self._step_field(body)
        model = self.model_at(step)
        tr = self._trace(np.asarray([ids], dtype=np.int64), step=step)
        return {"tokens": self.tokens_of(ids), "step": step, "layer": layer, "head": head, "position": position,
                "key_position": key, "norm": norm, "heads": self.model.n_head,
                "rmsnorm": plain(rmsnorm_view(tr, model, layer, position, norm)),
                "rope": plain(rope_view(tr, model, layer, head, position, key, shift)),
                "gqa": plain(gqa_view(model)),
                "swiglu": plain(swiglu_view(tr, model, layer, position))}

    # ---- over training: the logit lens, heads, parameter changes -------------------------------
    def lens(self, body: dict) -> dict:
        """The logit lens at a step: for each layer (the embeddings, then after each block) and position,
        the top next token and its probability, and the probability of the model's own final answer.
        A Transformer's decoder reads its greedy translation of ``text``."""
        from ..explain.lens import first_top_layer, logit_lens

        text = text_field(body)
        step = self._step_field(body)
        model = self.model_at(step)
        if self.encoder_decoder:
            from ..translate import encode_source, greedy_decode

            try:
                src = encode_source(self.tokenizer, text)
            except ScratchError as e:
                raise BadRequest(str(e)) from None
            if not src or len(src) > self.context:
                raise BadRequest(f"the sentence must give 1 to {self.context} tokens, not {len(src)}")
            with self.lock:
                out = greedy_decode(model, [src], self.bos_id, self.eos_id)[0]
            ids = [self.bos_id] + out
            inputs = (np.asarray([src], dtype=np.int64), np.asarray([ids], dtype=np.int64))
        else:
            ids = self.encode(text)
            inputs = np.asarray([ids], dtype=np.int64)
        tr = self._trace(inputs, step=step)
        with self.lock:
            probs = logit_lens(model, inputs, trace_=tr)[:, 0]  # (L + 1, T, V)
        top = probs.argmax(-1)  # (L + 1, T)
        p_top = np.take_along_axis(probs, top[..., None], -1)[..., 0]
        final = top[-1]  # (T,) the model's own answer at each position
        p_final = probs[:, np.arange(len(ids)), final]  # (L + 1, T)
        return {"tokens": self.tokens_of(ids), "step": step,
                "rows": ["embeddings"] + [f"after block {i}" for i in range(self.n_layers)],
                "top": [[{"id": int(i), "piece": self.piece(i)} for i in row] for row in top],
                "p_top": rounded(p_top, 6), "p_final": rounded(p_final, 6),
                "first": [int(x) for x in first_top_layer(probs[:, None])[0]]}

    def heads(self, body: dict) -> dict:
        """Each head's scores at every snapshot (previous token, induction, entropy: see
        :mod:`scratchllm.explain.dynamics`), computed once for the run."""
        from ..explain.dynamics import SCORES, head_scores

        self._need_snapshots()
        with self.lock:  # once, with BLAS on one thread
            if "heads" not in self._memo:
                rows = [head_scores(m) for _, m in self._each_snapshot()]
                self._memo["heads"] = {k: np.stack([r[k] for r in rows]) for k in SCORES}  # (S, L, H) each
        scores = self._memo["heads"]
        period = min(32, self.context // 2)
        return {"steps": self.snapshots, "scores": {k: rounded(v, 5) for k, v in scores.items()},
                "period": period, "layers": self.n_layers, "heads": self.model.n_head,
                "attention": "decoder self-attention" if self.encoder_decoder else "self-attention"}

    def changes(self, body: dict) -> dict:
        """Which parameters moved most between two snapshots (‖W_b − W_a‖ / max(‖W_a‖, ‖W_b‖))."""
        from ..explain.dynamics import param_changes

        self._need_snapshots()
        a = self._step_field({"step": body.get("from", self.snapshots[0])})
        b = self._step_field({"step": body.get("to", self.snapshots[-1])})
        top = number_field(body, "top", int, 1, 500, default=20)
        rows = param_changes(self.run_dir, a, b)
        return {"from": a, "to": b, "n_params": len(rows),
                "params": [{"name": r["name"], "shape": list(r["shape"]), "change": round(r["change"], 8),
                            "norm": round(r["norm"], 8), "relative": round(r["relative"], 8)} for r in rows[:top]]}

    # ---- translation --------------------------------------------------------------------
    def translate(self, body: dict) -> dict:
        """A translation (greedy or beam), the cross-attention behind it and each step's candidates."""
        from ..translate import beam_search, encode_source, greedy_decode, length_penalty_of

        if not self.encoder_decoder:
            raise BadRequest("translation needs a Transformer checkpoint (scratchllm translate-train)")
        text = text_field(body)
        beam = number_field(body, "beam", int, 1, 16, default=1)
        which = body.get("attention") or "cross"
        if which not in _ATTENTIONS:
            raise BadRequest(f"'attention' must be one of {', '.join(_ATTENTIONS)}, not {which!r}")
        stack = "encoder" if which == "encoder" else "decoder"
        n = getattr(self.model.config, f"n_{stack}_layers")
        layer = number_field(body, "layer", int, 0, n - 1, default=0)
        step = self._step_field(body)
        model = self.model_at(step)
        try:
            src = encode_source(self.tokenizer, text)
        except ScratchError as e:
            raise BadRequest(str(e)) from None
        if not src:
            raise BadRequest("the sentence gives no tokens")
        if len(src) > self.context:
            raise BadRequest(f"the sentence is {len(src)} tokens long; the model reads at most {self.context}")
        with self.lock:
            if beam == 1:
                out, score, found = greedy_decode(model, [src], self.bos_id, self.eos_id)[0], None, []
            else:
                hyps, scores, found = beam_search(model, [src], self.bos_id, self.eos_id, beam_size=beam,
                                                  length_penalty=_ALPHA, return_scores=True, return_candidates=True)
                out, score, found = hyps[0], scores[0], found[0]
        tgt_in = [self.bos_id] + out
        tgt_out = out + [self.eos_id]
        x = (np.asarray([src], dtype=np.int64), np.asarray([tgt_in], dtype=np.int64))
        tr = self._trace(x, np.asarray([tgt_out], dtype=np.int64), step)
        probs = np.asarray(tr["probs"][0], dtype=np.float64)  # (T, V)
        steps = []
        for t in range(len(tgt_out)):
            top = np.argsort(-probs[t], kind="stable")[:5]
            steps.append({"chosen": self.tokens_of([tgt_out[t]])[0], "p_chosen": round(float(probs[t, tgt_out[t]]), 6),
                          "candidates": [{"id": int(j), "piece": self.piece(j), "p": round(float(probs[t, j]), 6),
                                          "log_p": round(float(np.log(max(probs[t, j], 1e-300))), 4)} for j in top]})
        return {"source": self.tokens_of(src), "output": self.tokens_of(tgt_out), "inputs": self.tokens_of(tgt_in),
                "translation": self.tokenizer.decode(out).strip(), "beam": beam, "step": step,
                "score": None if score is None else round(float(score), 6),
                "log_prob": round(float(np.log(np.maximum(probs[np.arange(len(tgt_out)), tgt_out], 1e-300)).sum()), 6),
                "loss": float(tr.loss), "layer": layer, "layers": n, "attention": which,
                "weights": rounded(tr[_ATTENTIONS[which].format(layer)][0]),  # (H, rows, columns)
                "steps": steps, "length_penalty": _ALPHA,
                # the beam's finished hypotheses, best first (the first is the translation)
                "hypotheses": [{"text": self.tokenizer.decode(h["tokens"]).strip(), "ids": h["tokens"],
                                "length": len(h["tokens"]) + 1, "log_prob": round(h["log_prob"], 6),
                                "penalty": round(length_penalty_of(len(h["tokens"]) + 1, _ALPHA), 6),
                                "score": round(h["score"], 6), "chosen": i == 0} for i, h in enumerate(found)]}


_ALPHA = 0.6  # the length penalty's exponent: beam_search's default, which `scratchllm translate` uses

# the Transformer's three attentions: trace name, rows × columns
_ATTENTIONS = {"cross": "dec.{}.cross_attn.weights",  # output × source
               "decoder": "dec.{}.self_attn.weights",  # output × output (causal)
               "encoder": "enc.{}.self_attn.weights"}  # source × source
