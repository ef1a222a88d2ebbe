"""Training the encoder–decoder Transformer to translate (Vaswani et al. 2017).

A run directory (``--out``, default ``out-translate/``) holds::

    tokenizer.json   the joint BPE tokenizer, learned once from the training pairs
    ckpt/            the checkpoint: config, weights, tokenizer, optimizer moments,
                     dropout generator, epoch and batch position
    log.jsonl        a "train" line every ``log_interval`` steps, an "epoch" line
                     (val loss, val BLEU) after each epoch, a "final" line (which
                     weights and decoding were chosen, and their val BLEU)
    epochs/          the weights the last ``average`` epochs ended with
    model/           what ``scratchllm translate`` reads: the chosen weights, the
                     tokenizer, and in config.json the beam size and length penalty
    snapshots/       the weights at ``snapshots`` steps, to watch the run learn

**Data.** Sentence pairs from Multi30k (German → English) or from two
line-aligned files. One byte-level BPE tokenizer is learned on the source and
target training sentences together, so one embedding table serves the
encoder, the decoder and the output layer. Special tokens: ``<pad>``,
``<bos>``, ``<eos>``; no ``<unk>`` is needed, as every byte is a token. A
source is its tokens; the decoder reads BOS + tokens and predicts
tokens + EOS. 8000 tokens by default: Multi30k's 29k training pairs hold about
10k German and 6k English word forms, and 8000 joint tokens keep the frequent
words whole (≈15 tokens per sentence, ≈12 words) while the output layer, the
largest single matrix, stays a quarter of the model.

**Batches.** Pairs of similar length go together, each batch at most
``max_tokens`` padded tokens on either side. The batches of epoch e come from
a generator seeded by (seed, e), so the data position is just (epoch, batch).

**Schedule.** Adam (β₂ 0.98, ε 1e-9), a linear warmup to ``lr`` over
``warmup_steps``, then a straight line down to 0 at the run's end
(``schedule="linear"``): the end is ``--minutes`` of wall-clock time when
given (the run's clock, evaluations included, is kept in the checkpoint), or
its epochs' steps. So a two-hour run is a finished schedule, not a cut one.
``schedule="inverse-sqrt"`` is the paper's lr·√(warmup/step), which needs no
end. Label smoothing 0.1, gradient clipping at norm 1. The defaults
(2048-token batches, peak 2e-3 after 400 steps) were chosen for a two-hour
run on a 2-core CPU: against 4096-token batches, a peak of 1e-3 or 800
warmup steps they gave the lowest loss and the best val BLEU after one to two
epochs, at the same tokens per second (bench/RESULTS.md).

**The weights kept.** After each epoch the weights go to ``epochs/`` (the
last ``average`` of them). When the run ends, their mean is compared on the
validation BLEU sentences with the last weights, and the better one is
written to ``model/`` with the beam size and length penalty that scored best
there (``tune_decoding``): ``scratchllm translate`` reads ``model/`` (its
config.json says which weights and which decoding). The rest of the
validation set is never looked at for a choice.

**Resume.** Weights, Adam moments, step, position and the dropout generator
come back from the checkpoint, so a resumed run is bit-identical to one that
was never stopped. Ctrl-C (or ``minutes``, or ``max_steps``) finishes the
step, saves and leaves. The loop itself (checkpoints, log, NaN stop, Ctrl-C,
progress bar, MPI ranks) is :class:`~scratchllm.loop.TrainingLoop`, shared
with the GPT's trainer.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from . import checkpoint
from . import snapshots as snap
from .data import length_grouped_batches, load_parallel, multi30k, pad_batch
from .errors import ScratchError
from .loop import TrainingLoop
from .models.transformer import Transformer, TransformerConfig
from .optim import AdamW, adamw_for, inverse_sqrt_lr, linear_decay_lr
from .tensor import no_grad
from .translate import SPECIAL_TOKENS, encode_source, special_ids, translate_texts

PARALLEL_DATASETS = ("multi30k",)


@dataclass
class TranslationConfig:
    # data: a registered parallel dataset, or line-aligned files (src/tgt set)
    data: str = "multi30k"
    data_dir: str = ""
    src: str = ""
    tgt: str = ""
    val_src: str = ""
    val_tgt: str = ""
    out: str = "out-translate"
    vocab_size: int = 8000
    tokenizer: str = "bpe"  # "bpe" (byte-level) or "unigram" (SentencePiece's, with byte fallback)
    # model: pre-norm, sinusoidal positions, shared embeddings tied to the output
    d_model: int = 256
    n_head: int = 4
    n_layers: int = 3  # encoder layers, and as many decoder layers
    d_ff: int = 1024
    dropout: float = 0.3  # Multi30k's 29k pairs overfit a 7.6M model at 0.1 after ~8 epochs
    max_len: int = 128
    # optimisation
    epochs: int = 0  # 0: 30, or with --minutes as many as fit
    max_tokens: int = 2048  # ≈ 130 Multi30k pairs: 240 steps an epoch
    lr: float = 2e-3
    warmup_steps: int = 400
    schedule: str = "linear"  # "linear": warmup, then down to 0 at the run's end; "inverse-sqrt": the paper's
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    threads: int = 2  # each batch split over this many threads (scratchllm.sharded); 1: BLAS's threads only
    # bookkeeping
    bleu_sentences: int = 500  # validation sentences translated (greedy) for BLEU after each epoch; 0: none
    log_interval: int = 50
    max_steps: int = 0  # stop (and save) at this step; 0: no limit
    minutes: float = 0.0  # stop (and save) after this much wall-clock time; 0: no limit
    save_minutes: float = 10.0  # also save mid-epoch this often
    seed: int = 0
    snapshots: int = 20  # steps whose weights are kept in out/snapshots (0, the last, log-spaced between); 0: none
    average: int = 5  # the last this many epochs' weights averaged into out/model at the end (1: the last alone)
    tune_decoding: bool = True  # choose beam size and length penalty on the validation BLEU sentences at the end
    progress: bool = True


# What a resumed run may change: its length and bookkeeping, never the model or the data.
RESUMABLE = ("epochs", "bleu_sentences", "log_interval", "max_steps", "minutes", "save_minutes", "snapshots",
             "progress", "data_dir", "out", "average", "tune_decoding")
DEFAULT_EPOCHS = 30  # without --minutes or --epochs
SCHEDULES = ("linear", "inverse-sqrt")
EPOCHS_DIR = "epochs"  # the last epochs' weights, for averaging
MODEL_DIR = "model"  # the weights translate uses, with their decoding settings
DECODING_GRID = ((4, 0.6), (4, 1.0), (4, 1.4))  # (beam, length penalty) tried on validation; then beam 8 at the best


# ---- data -----------------------------------------------------------------------------
def load_pairs(cfg: TranslationConfig):
    """(train_src, train_tgt, val_src, val_tgt) lines. Files without validation
    files: the last 5 % of the pairs (at most 1000) are held out."""
    if cfg.src or cfg.tgt:
        if not (cfg.src and cfg.tgt):
            raise ScratchError("give both --src and --tgt (line-aligned files)")
        src, tgt = load_parallel(cfg.src, cfg.tgt)
        if cfg.val_src or cfg.val_tgt:
            if not (cfg.val_src and cfg.val_tgt):
                raise ScratchError("give both --val-src and --val-tgt, or neither")
            return (src, tgt) + load_parallel(cfg.val_src, cfg.val_tgt)
        if len(src) < 2:
            raise ScratchError(f"{cfg.src} holds one pair: too few to hold some out for validation "
                               "(give --val-src/--val-tgt)")
        n_val = min(1000, max(1, len(src) // 20))
        return src[:-n_val], tgt[:-n_val], src[-n_val:], tgt[-n_val:]
    if cfg.data not in PARALLEL_DATASETS:
        raise ScratchError(f"unknown parallel dataset {cfg.data!r}: use {', '.join(PARALLEL_DATASETS)} "
                           "or --src FILE --tgt FILE")
    data_dir = cfg.data_dir or None
    return multi30k("train", data_dir) + multi30k("val", data_dir)


def train_tokenizer(src_lines, tgt_lines, vocab_size: int, kind: str = "bpe"):
    """A joint tokenizer over source and target sentences, with the translation specials:
    byte-level BPE, or SentencePiece's unigram model (nmt_nfkc, bytes for unseen characters)."""
    from .tokenizers import BPETokenizer, UnigramTokenizer

    if kind == "bpe":
        tok = BPETokenizer(special_tokens=SPECIAL_TOKENS)
    elif kind == "unigram":
        tok = UnigramTokenizer(special_tokens=SPECIAL_TOKENS, byte_fallback=True)
    else:
        raise ScratchError(f"--tokenizer must be 'bpe' or 'unigram', not {kind!r}")
    return tok.train("\n".join(list(src_lines) + list(tgt_lines)), vocab_size)


def check_config(cfg: TranslationConfig) -> None:
    """Every value of a TranslationConfig checked before any data is read or any file written."""
    for name in ("threads", "max_tokens", "d_model", "n_head", "n_layers", "d_ff", "max_len", "log_interval", "average"):
        if getattr(cfg, name) < 1:
            raise ScratchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("epochs", "warmup_steps", "weight_decay", "grad_clip", "bleu_sentences", "max_steps", "minutes",
                 "save_minutes", "label_smoothing"):
        if getattr(cfg, name) < 0:
            raise ScratchError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or not cfg.eps > 0:
        raise ScratchError(f"--{'lr' if not cfg.lr > 0 else 'eps'} must be above 0, got "
                           f"{cfg.lr if not cfg.lr > 0 else cfg.eps}")
    for name in ("dropout", "beta1", "beta2", "label_smoothing"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ScratchError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(cfg, name)}")
    snap.check_count(cfg.snapshots)
    if cfg.d_model % cfg.n_head:
        raise ScratchError(f"--d-model ({cfg.d_model}) must be divisible by --n-head ({cfg.n_head})")
    if cfg.schedule not in SCHEDULES:
        raise ScratchError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {cfg.schedule!r}")
    if cfg.tokenizer not in ("bpe", "unigram"):
        raise ScratchError(f"--tokenizer must be 'bpe' or 'unigram', not {cfg.tokenizer!r}")
    if cfg.vocab_size < 260:
        raise ScratchError(f"--vocab-size must be at least 260 (the 256 bytes, the special tokens, some merges), "
                           f"got {cfg.vocab_size}")
    if not (cfg.src or cfg.tgt) and cfg.data not in PARALLEL_DATASETS:
        raise ScratchError(f"unknown parallel dataset {cfg.data!r}: use {', '.join(PARALLEL_DATASETS)} "
                           "or --src FILE --tgt FILE")


class PairData:
    """Sentence pairs as ids: sources, and targets framed as BOS + tokens + EOS."""

    def __init__(self, tokenizer, src_lines, tgt_lines, limit: int):
        self.pad, bos, eos = special_ids(tokenizer)
        src = [encode_source(tokenizer, s) for s in src_lines]
        tgt = [[bos] + tokenizer.encode(t, disallowed_special=()) + [eos] for t in tgt_lines]
        # The decoder reads all but the last target token: len(t) − 1 positions.
        keep = [i for i in range(len(src)) if len(src[i]) <= limit and len(tgt[i]) - 1 <= limit]
        self.dropped = len(src) - len(keep)
        self.src = [src[i] for i in keep]
        self.tgt = [tgt[i] for i in keep]
        self.src_lens = np.array([len(s) for s in self.src])
        self.tgt_lens = np.array([len(t) - 1 for t in self.tgt])
        if not self.src:
            raise ScratchError(f"no sentence pair fits in {limit} tokens: raise --max-len or --max-tokens")

    def __len__(self):
        return len(self.src)

    def batch(self, rows):
        """Rows -> (src (B, S), tgt_in (B, T), tgt_out (B, T)) padded with pad_id."""
        src, _ = pad_batch([self.src[i] for i in rows], self.pad)
        tgt, _ = pad_batch([self.tgt[i] for i in rows], self.pad)  # (B, T + 1)
        return src, tgt[:, :-1], tgt[:, 1:]

    def batches(self, max_tokens: int, rng=None):
        return length_grouped_batches(self.src_lens, self.tgt_lens, max_tokens, rng, shuffle=rng is not None)


class Pairs:
    """A batch's sources and decoder inputs, cut by rows together: the ``x`` of a
    :class:`~scratchllm.sharded.ShardedBackward` step, whose ``y`` is the targets."""

    def __init__(self, src, tgt_in):
        self.src, self.tgt_in = src, tgt_in

    def __len__(self):
        return len(self.src)

    def __getitem__(self, rows):
        return Pairs(self.src[rows], self.tgt_in[rows])


class PairLoss:
    """The Transformer as ShardedBackward calls a model: ``(x: Pairs, y) -> (None, loss)``,
    the label-smoothed loss over the non-pad targets; the rest is the model's."""

    def __init__(self, model: Transformer, label_smoothing: float):
        self.model, self.label_smoothing = model, label_smoothing

    def __call__(self, x: Pairs, y):
        return None, self.model.loss(x.src, x.tgt_in, y, label_smoothing=self.label_smoothing)

    def __getattr__(self, name):
        return getattr(self.model, name)


# ---- model and optimizer ---------------------------------------------------------------
def build_model(cfg: TranslationConfig, tokenizer) -> Transformer:
    pad, _, _ = special_ids(tokenizer)
    V = tokenizer.vocab_size
    tcfg = TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=cfg.d_model, n_head=cfg.n_head,
                             n_encoder_layers=cfg.n_layers, n_decoder_layers=cfg.n_layers, d_ff=cfg.d_ff,
                             dropout=cfg.dropout, max_len=cfg.max_len, shared_embeddings=True, tie_output=True,
                             norm_first=True, pad_id=pad)
    return Transformer(tcfg, seed=cfg.seed)


def build_optimizer(model: Transformer, cfg: TranslationConfig) -> AdamW:
    return adamw_for(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay, cfg.eps)


def mean_weights(weights) -> dict:
    """The elementwise mean of state dicts (an iterable, read one at a time), summed in float64 and
    given back in the first one's dtypes."""
    total, dtypes, n = {}, {}, 0
    for w in weights:
        for k, v in w.items():
            if k not in total:
                total[k], dtypes[k] = np.zeros(np.shape(v), np.float64), v.dtype
            total[k] += v
        n += 1
    return {k: (v / n).astype(dtypes[k]) for k, v in total.items()}


def validation_loss(model: Transformer, data: PairData, max_tokens: int) -> float:
    """Cross-entropy per target token over all pairs (no label smoothing, no dropout)."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with no_grad():
        for rows in data.batches(max_tokens):
            src, tgt_in, tgt_out = data.batch(rows)
            n = int((tgt_out != data.pad).sum())
            total += model.loss(src, tgt_in, tgt_out).item() * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


# ---- the run ----------------------------------------------------------------------------
ESTIMATE_AFTER = 20  # steps after which the run's length is estimated
SETTLE_STEPS = 5  # the first steps, slowed by one-off start-up work, are left out of a step's time


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class TranslationTrainer(TrainingLoop):
    """A Transformer's run: epochs of length-grouped batches, a "train" log line every
    ``log_interval`` steps, evaluated and saved after each epoch (and every
    ``save_minutes``); the loop itself is :class:`~scratchllm.loop.TrainingLoop`."""

    config_class = TranslationConfig
    resumable = RESUMABLE

    def __init__(self, cfg: TranslationConfig, resume: bool = False, echo=print, world=None, clock=time.perf_counter):
        self.clock = clock  # seconds; the --minutes budget and the schedule read it (a test may drive it)
        cfg, state = self.open_run(cfg, resume, world, echo)
        if state is not None and "schedule" not in state["train_config"]:
            cfg.schedule = "inverse-sqrt"  # a run from before the setting: it goes on as it began
        self.cfg = cfg
        check_config(cfg)
        train_src, train_tgt, self.val_src, self.val_tgt = load_pairs(cfg)
        self.tokenizer = checkpoint.load_tokenizer(self.ckpt_dir) if state is not None \
            else train_tokenizer(train_src, train_tgt, cfg.vocab_size, cfg.tokenizer)
        limit = min(cfg.max_len, cfg.max_tokens)
        self.train_data = PairData(self.tokenizer, train_src, train_tgt, limit)
        self.val_data = PairData(self.tokenizer, self.val_src, self.val_tgt, limit)
        model = build_model(cfg, self.tokenizer)
        self.set_model(model, build_optimizer(model, cfg), PairLoss(model, cfg.label_smoothing), self.train_data.pad)
        # position and running totals; all saved in the checkpoint
        self.epoch = self.batch = 0
        self.batches = None  # this epoch's batches (lists of pair indices), once it has begun
        self.epoch_loss = [0.0, 0]  # Σ loss·tokens, target tokens this epoch
        self.train_tokens, self.train_seconds = 0, 0.0  # source + target tokens, time in steps
        self.window = [0.0, 0, 0, 0.0]  # Σ loss, steps, tokens, seconds since the last "train" log line
        self.clock_before = 0.0  # seconds this run spent before this process took it up (a resume)
        self.eval_seconds = 0.0  # how long the last epoch's evaluation took: the end's work is planned by it
        self._total_steps = None
        self.fit_steps, self.fit_start, self.timed_from, self.replanned, self.final = 0, None, None, False, None
        if state is not None:
            self.restore()
        self.start_log(self.step if resume else None)
        self.world.check_same("settings", asdict(cfg) | {"progress": None, "step": self.step, "batch": self.batch})
        self.world.check_same("data or weights", {"vocab": self.tokenizer.vocab_size, "pairs": len(self.train_data),
                                                   "src": np.concatenate(self.train_data.src),
                                                   "tgt": np.concatenate(self.train_data.tgt)} | self.model.state_dict())

    # ---- what the checkpoint holds besides the loop's own ----------------------------------
    def extra_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "epoch_loss": self.epoch_loss,
                "train_tokens": self.train_tokens, "train_seconds": self.train_seconds,
                "run_seconds": self.run_seconds(), "eval_seconds": self.eval_seconds,
                "schedule_steps": None if self.cfg.minutes else self.total_steps()}  # for drawing the schedule

    def load_extra_state(self, state: dict):
        self.epoch, self.batch = state["epoch"], state["batch"]
        self.epoch_loss = list(state["epoch_loss"])
        self.train_tokens, self.train_seconds = state["train_tokens"], state["train_seconds"]
        self.clock_before = state.get("run_seconds", 0.0)
        self.eval_seconds = state.get("eval_seconds", 0.0)

    # ---- one step ------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return self.train_data.batches(self.cfg.max_tokens, np.random.default_rng([self.cfg.seed, epoch]))

    # ---- the schedule: where the run ends, and how far it has come -------------------------
    def epoch_limit(self) -> int | None:
        """The epochs the run may take: --epochs, else 30, or no limit when --minutes sets the end."""
        return self.cfg.epochs or (None if self.cfg.minutes else DEFAULT_EPOCHS)

    def total_steps(self) -> int | None:
        """The steps of the epochs to run (their batch counts, each epoch's own); None: --minutes alone ends
        the run. (--max-steps is a stop, as Ctrl-C is: a run stopped by it resumes on the same schedule.)"""
        if self._total_steps is None:
            limit = self.epoch_limit()
            self._total_steps = (sum(len(self.epoch_batches(e)) for e in range(limit)) if limit else None,)
        return self._total_steps[0]

    def run_seconds(self) -> float:
        """Wall-clock seconds the run has taken, evaluations included, across resumes."""
        started = getattr(self, "fit_start", None)
        return self.clock_before + (self.clock() - started if started is not None else 0.0)

    def end_seconds(self) -> float:
        """The clock time at which training must stop for the run to end at --minutes: what
        the end's averaging and decoding choice will take (planned from the last evaluation) is kept back."""
        return max(60 * self.cfg.minutes - self.reserve_seconds(), 0.0)

    def reserve_seconds(self) -> float:
        if not self.cfg.bleu_sentences:
            return 0.0
        runs = (1 if self.cfg.average > 1 else 0) + (2.5 * (len(DECODING_GRID) + 1) if self.cfg.tune_decoding else 0)
        return min(runs * self.eval_seconds, 6 * self.cfg.minutes)  # at most a tenth of the budget

    def progress(self, step: int) -> float:
        """How much of the run is done, 0 to 1: its share of steps or of minutes, whichever is further."""
        shares = []
        total = self.total_steps()
        if total:
            shares.append(step / total)
        if self.cfg.minutes:
            shares.append(self.run_seconds() / max(self.end_seconds(), 1e-9))
        return max(shares, default=0.0)

    def lr_at(self, step: int) -> float:
        if self.cfg.schedule == "inverse-sqrt":
            return inverse_sqrt_lr(step, self.cfg.lr, self.cfg.warmup_steps)
        return linear_decay_lr(step, self.progress(step), self.cfg.lr, self.cfg.warmup_steps)

    def train_step(self, rows) -> tuple[float, int]:
        """One Adam step on the pairs ``rows``; returns (loss, source + target tokens)."""
        src, tgt_in, tgt_out = self.train_data.batch(rows)
        value = self.update([(Pairs(src, tgt_in), tgt_out)])
        n_tgt = int((tgt_out != self.train_data.pad).sum())
        self.epoch_loss[0] += value * n_tgt
        self.epoch_loss[1] += n_tgt
        return value, int((src != self.train_data.pad).sum()) + n_tgt

    def advance(self) -> tuple[float, int]:
        loss, n_tok = self.train_step(self.batches[self.batch])
        self.batch += 1
        return loss, n_tok

    def after_step(self, loss: float, tokens: int, seconds: float):
        cfg = self.cfg
        self.fit_steps += 1
        if self.fit_steps == SETTLE_STEPS:
            self.timed_from = (self.clock(), self.fit_steps)
        if self.fit_steps == ESTIMATE_AFTER:
            self._say(self.time_estimate())
            self.snapshot_plan = None  # planned again, now that the run's length is known
        self.train_tokens += tokens
        self.train_seconds += seconds
        w = self.window
        self.window = [w[0] + loss, w[1] + 1, w[2] + tokens, w[3] + seconds]
        if self.step % cfg.log_interval == 0:
            w = self.window
            self.log({"kind": "train", "epoch": self.epoch + 1, "step": self.step, "loss": w[0] / w[1],
                      "lr": self.opt.lr, "tokens_per_s": w[2] / w[3]})
            self.window = [0.0, 0, 0, 0.0]
        if cfg.save_minutes and time.perf_counter() - self.last_save_time > 60 * cfg.save_minutes:
            self.save()

    def finished(self) -> bool:
        limit = self.epoch_limit()
        return limit is not None and self.epoch >= limit

    def planned_steps(self) -> int:
        """The run's steps: its epochs' (or --max-steps), or under --minutes as many as the time left
        allows at the speed of the steps so far (the first epoch's count until that is measured)."""
        total = self.total_steps() or (self.step + len(self.batches) if self.batches is not None else self.step)
        if self.cfg.minutes and self.fit_steps:
            in_time = self.step + int(max(self.end_seconds() - self.run_seconds(), 0.0) / self.step_seconds())
            total = min(self.total_steps() or in_time, in_time)
        return min(total, self.cfg.max_steps or total)

    def step_seconds(self) -> float:
        """Wall-clock seconds a step takes in this process, evaluations and saves included once there have
        been some; after the first SETTLE_STEPS, timed from there (the start's one-off work left out)."""
        t0, n0 = self.timed_from if self.timed_from and self.fit_steps > self.timed_from[1] else (self.fit_start, 0)
        return max(self.clock() - t0, 1e-9) / max(self.fit_steps - n0, 1)

    def where(self) -> str:
        return f"epoch {self.epoch + 1}, batch {self.batch} (step {self.step})"

    def stop_reason(self, stop, start: float) -> str | None:
        cfg = self.cfg
        if stop.requested:
            return "interrupted"
        if cfg.max_steps and self.step >= cfg.max_steps:
            return f"stopped at --max-steps {cfg.max_steps}"
        if cfg.minutes and self.run_seconds() >= self.end_seconds():
            return f"stopped at the end of --minutes {cfg.minutes:g}"
        return None

    # ---- epochs and evaluation -------------------------------------------------------------
    def between_steps(self):
        """At an epoch's last batch: close it (evaluate, log, save); then open the next."""
        while not self.finished():
            if self.batches is None:
                self.batches = self.epoch_batches(self.epoch)
                limit = self.epoch_limit()
                self.open_bar(total=len(self.batches), initial=self.batch, unit="batch",
                              desc=f"epoch {self.epoch + 1}" + (f"/{limit}" if limit else ""), leave=False)
            if self.batch < len(self.batches):
                return
            self.close_bar()
            self.record = self.end_epoch(self.run_seconds())
            if self.world.is_root:  # the only rank that evaluated
                self.log(self.record)
                self.echo(self._epoch_line(self.record))
                if self.cfg.minutes and not self.replanned and self.fit_steps > ESTIMATE_AFTER:
                    self.echo(self.replan_line())
            self.save()
            self.keep_epoch_weights()
            self.batches = None

    def time_estimate(self) -> str:
        """The run's plan at the speed of its first steps: how many steps, how long, and how to make it shorter."""
        cfg = self.cfg
        per_step = self.step_seconds()
        total = self.planned_steps()
        left = max(total - self.step, 0)
        per_epoch = len(self.batches) if self.batches else 1
        if cfg.minutes and (not self.total_steps() or total < self.total_steps()):
            length = (f"--minutes {cfg.minutes:g}: about {total:,} steps (≈{total / per_epoch:.1f} epochs), "
                      f"the last at {_duration(self.end_seconds())}")
        else:
            length = f"{left:,} steps to go: about {_duration(per_step * left)}"
        lr = ("warms up over {w} steps, then falls in a straight line to 0 at the last step".format(w=cfg.warmup_steps)
              if cfg.schedule == "linear" else f"warms up over {cfg.warmup_steps} steps, then falls as 1/√step")
        end = []
        if cfg.average > 1:
            end.append(f"the last {cfg.average} epochs' weights averaged")
        if cfg.tune_decoding and cfg.bleu_sentences:
            end.append("beam size and length penalty chosen on validation")
        return (f"plan: {per_step:.2f} s a step on this machine; {length}. The learning rate {lr}. Val loss"
                f"{' and BLEU' if cfg.bleu_sentences else ''} after each epoch"
                + (f"; at the end {' and '.join(end)} ({MODEL_DIR}/)" if end else "") +
                ". Shorter: --minutes M, --epochs N, or a smaller model (e.g. --d-model 128 --d-ff 512 --n-layers 2).")

    def replan_line(self) -> str:
        """After this process's first whole epoch, the --minutes plan again at the pace of that epoch,
        its evaluation included (the first steps' estimate knows nothing of evaluations)."""
        self.replanned, self.snapshot_plan = True, None
        total, per_epoch = self.planned_steps(), max(len(self.batches), 1)
        return (f"plan after epoch {self.epoch}: {self.step_seconds():.2f} s a step with the evaluations; "
                f"--minutes {self.cfg.minutes:g}: about {total:,} steps (≈{total / per_epoch:.1f} epochs)")

    def _say(self, line: str):
        """A line between the progress bar's updates (the bar is redrawn under it)."""
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            self.echo(line)

    def open_snapshots(self):
        if self.world.is_root:  # the epochs' weights past a resumed step are redone; a fresh run has none
            snap.trim_snapshots(self.run, self.step if self.resuming else None, folder=EPOCHS_DIR)
        super().open_snapshots()

    def fit(self, echo=None) -> dict:
        """Train to the run's end (or until a stop); return the last epoch's record. At the end
        (not at Ctrl-C) the weights translate uses are chosen and written to ``model/``."""
        self.fit_start, self.timed_from, self.replanned = self.clock(), None, False
        self.fit_steps = 0
        self.window = [0.0, 0, 0, 0.0]
        record = super().fit(echo)
        if self.stopped != "interrupted" and self.world.is_root:
            self.choose_final()
        return record

    def evaluate(self) -> dict:
        """Val loss over all validation pairs; val BLEU of greedy translations of the first ``bleu_sentences``."""
        record = {"val_loss": validation_loss(self.model, self.val_data, self.cfg.max_tokens)}
        if self.tune_sentences():
            record["val_bleu"] = self.val_bleu(self.model)
        return record

    def tune_sentences(self) -> int:
        """The validation sentences that BLEU is measured on, and every choice made by (the first ones)."""
        return min(self.cfg.bleu_sentences, len(self.val_src))

    def val_bleu(self, model, beam_size: int = 1, length_penalty: float | None = None) -> float:
        from .metrics import bleu

        n = self.tune_sentences()
        hyps = translate_texts(model, self.tokenizer, self.val_src[:n], beam_size=beam_size,
                               length_penalty=length_penalty, batch_size=100)
        return bleu(hyps, self.val_tgt[:n])

    # ---- the weights translate uses --------------------------------------------------------
    def keep_epoch_weights(self):
        """This epoch's end weights into epochs/, the last ``average`` of them kept."""
        if self.cfg.average < 2 or not self.world.is_root:
            return
        snap.write_snapshot(self.run, self.step, self.model, folder=EPOCHS_DIR)
        kept = list(snap.list_snapshots(self.run, EPOCHS_DIR).items())
        for _, path in kept[:-self.cfg.average]:
            path.unlink(missing_ok=True)

    def averaged_weights(self) -> tuple[dict, list[int]]:
        """The mean of the last ``average`` epochs' weights (this step's own if it ended mid-epoch), and their steps."""
        kept = snap.list_snapshots(self.run, EPOCHS_DIR)
        steps = [s for s in kept if s <= self.step]
        current = {k: np.array(v) for k, v in self.model.state_dict().items()}
        if self.step not in steps:
            steps.append(self.step)
        steps = steps[-self.cfg.average:]
        weights = (current if s == self.step else snap.read_snapshot(self.run, s, folder=EPOCHS_DIR) for s in steps)
        return mean_weights(weights), steps

    def choose_final(self) -> dict:
        """model/: the better on the validation BLEU sentences of the last weights and the average of the
        last epochs', with the (beam, length penalty) that scores best there; logged as a "final" line."""
        import copy

        cfg, t0 = self.cfg, self.clock()
        n = self.tune_sentences()
        final = {"kind": "final", "step": self.step, "weights": "last", "steps_averaged": [self.step]}
        model = self.model
        if n:
            last = self.record.get("val_bleu") if self.record.get("step") == self.step else None
            final["val_bleu_last"] = last if last is not None else self.val_bleu(self.model)
        if cfg.average > 1:
            weights, steps = self.averaged_weights()
            if len(steps) > 1:
                final["average_of"] = steps
                averaged = copy.deepcopy(self.model)
                averaged.load_state_dict(weights)
                if n:
                    final["val_bleu_average"] = self.val_bleu(averaged)
                if not n or final["val_bleu_average"] >= final["val_bleu_last"]:
                    model, final["weights"], final["steps_averaged"] = averaged, "average", steps
        decoding = {"beam": 4, "length_penalty": 0.6}
        if n and cfg.tune_decoding:
            scores = {(b, a): self.val_bleu(model, b, a) for b, a in DECODING_GRID}
            best_alpha = max(scores, key=scores.get)[1]
            scores[(8, best_alpha)] = self.val_bleu(model, 8, best_alpha)
            (beam, alpha) = max(scores, key=scores.get)
            decoding = {"beam": beam, "length_penalty": alpha}
            final["decoding_val_bleu"] = {f"beam {b}, alpha {a:g}": round(v, 2) for (b, a), v in scores.items()}
        final |= {"decoding": decoding, "val_sentences": n, "seconds": round(self.clock() - t0, 1),
                  "run_seconds": round(self.run_seconds(), 1)}
        checkpoint.save(model, self.run / MODEL_DIR, tokenizer=self.tokenizer,
                        extra_config={"chosen": {k: final[k] for k in ("weights", "steps_averaged", "step")},
                                      "decoding": decoding})
        self.log(final)
        self.echo(self._final_line(final))
        self.final = final
        return final

    def _final_line(self, f: dict) -> str:
        what = (f"the mean of the weights at steps {', '.join(map(str, f['steps_averaged']))}"
                if f["weights"] == "average" else f"the last weights (step {f['step']})")
        scores = ""
        if "val_bleu_last" in f:
            scores = f" (val BLEU, greedy, {f['val_sentences']} sentences: last {f['val_bleu_last']:.2f}" + \
                     (f", average {f['val_bleu_average']:.2f}" if "val_bleu_average" in f else "") + ")"
        d = f["decoding"]
        return (f"{self.run / MODEL_DIR}: {what}{scores}; decoding: beam {d['beam']}, length penalty "
                f"{d['length_penalty']:g}" + (" (chosen on validation)" if "decoding_val_bleu" in f else "") +
                f"; {f['seconds']:.0f} s, run {_duration(f['run_seconds'])}")

    def end_epoch(self, elapsed: float) -> dict:
        total, count = self.epoch_loss
        record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step, "train_loss": total / max(count, 1)}
        if self.world.is_root:  # the others need not wait for it: nothing in training depends on it
            t0 = self.clock()
            record |= self.evaluate()
            self.eval_seconds = self.clock() - t0
        record |= {"lr": self.opt.lr, "tokens_per_s": self.train_tokens / max(self.train_seconds, 1e-9),
                   "elapsed_s": round(elapsed, 1)}
        self.epoch, self.batch, self.epoch_loss = self.epoch + 1, 0, [0.0, 0]
        return record

    @staticmethod
    def _epoch_line(r: dict) -> str:
        bleu = f", val BLEU {r['val_bleu']:.2f}" if "val_bleu" in r else ""
        return (f"epoch {r['epoch']} (step {r['step']}): train loss {r['train_loss']:.3f}, "
                f"val loss {r['val_loss']:.3f}{bleu}, {r['tokens_per_s']:,.0f} tokens/s")


def train_translation(cfg: TranslationConfig, resume: bool = False, echo=print) -> TranslationTrainer:
    trainer = TranslationTrainer(cfg, resume=resume, echo=echo)
    trainer.fit()
    return trainer
