"""Training a GPT: data once into token files, AdamW with warmup + cosine,
evaluation every ``eval_interval`` steps. The loop itself (checkpoints and
exact resume, the JSONL log, the NaN stop, Ctrl-C, the progress bar, MPI
ranks) is :class:`~scratchllm.loop.TrainingLoop`, which the Transformer's
trainer shares; this file says what is the GPT's own.

A run directory (``--out``, default ``out/``) holds::

    train.bin, val.bin (+ .json)   token ids, written once, read as memmaps
    ckpt/                          the checkpoint (config, weights, tokenizer,
                                   optimizer moments, RNG states, step)
    log.jsonl                      one line per evaluation
    snapshots/                     the weights at --snapshots steps (scratchllm.snapshots)
    loss.png                       the curves (if matplotlib is installed)

Resuming restores weights, optimizer moments, the step, and the states of the
batch and dropout generators, so a resumed run is bit-identical to one that
was never stopped. The cosine schedule's length is a setting of its own,
``lr_decay_iters`` (default: the first run's ``max_iters``), kept in the
checkpoint: a run resumed to a larger ``max_iters`` is bit for bit a fresh run
with the same ``lr_decay_iters`` and that ``max_iters``. Evaluation draws from
its own generator seeded by the step, so evaluating more or less often changes
nothing in training. The log gets one line for the step a run resumed at
(marked ``"resumed": true``); a run started afresh starts a fresh log.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .data import get_batch, load_text, read_token_bin, train_val_split, write_token_bin
from .errors import ScratchError
from .loop import TrainingLoop
from .models.gpt import GPT, GPTConfig
from .optim import AdamW, CosineWithWarmup, adamw_for
from .tensor import no_grad

PRESETS = {
    # name: (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "small": (4, 4, 128),  # the benchmark model, ~0.8 M parameters
    "medium": (6, 6, 384),  # nanoGPT's shakespeare-char model, ~10 M parameters
}


@dataclass
class TrainConfig:
    data: str = "builtin"
    data_dir: str = ""  # where registered datasets are looked for (else $SCRATCHLLM_DATA_DIR, the cache)
    tokenizer: str = "char"  # "char", "bpe", "unigram", or a tokenizer.json path
    bpe_vocab_size: int = 512
    out: str = "out"
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    positional: str = "learned"
    arch: str = "gpt"  # "gpt", or "llama" (RMSNorm, rotary positions, SwiGLU, grouped-query attention)
    n_kv_head: int = 0  # a Llama's key/value heads; 0: half the query heads (all of them if n_head is odd)
    # optimisation (nanoGPT's shakespeare-char settings)
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # the cosine's length in steps; 0: max_iters (of the first run: kept on resume)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    threads: int = 2  # each batch split over this many threads (scratchllm.sharded); 1: BLAS's threads only
    # bookkeeping
    eval_interval: int = 250
    eval_iters: int = 20
    val_frac: float = 0.1
    seed: int = 1337
    sample_tokens: int = 300
    snapshots: int = 20  # steps whose weights are kept in out/snapshots (0, the last, log-spaced between); 0: none
    progress: bool = True


# ---- data -----------------------------------------------------------------------
def build_tokenizer(cfg: TrainConfig, text: str):
    from . import tokenizers

    if cfg.tokenizer == "char":
        return tokenizers.CharTokenizer.from_text(text)
    if cfg.tokenizer == "bpe":
        tok = tokenizers.BPETokenizer()
        tok.train(text, cfg.bpe_vocab_size)
        return tok
    if cfg.tokenizer == "unigram":
        # Lossless, so samples decode to the text's own spacing: no normalisation,
        # spaces kept, and bytes for characters outside the vocabulary (newlines too).
        tok = tokenizers.UnigramTokenizer(normalization="identity", byte_fallback=True,
                                          remove_extra_whitespaces=False)
        tok.train(text, cfg.bpe_vocab_size)
        return tok
    path = Path(cfg.tokenizer)
    if not path.is_file():
        raise ScratchError(f"--tokenizer must be 'char', 'bpe', 'unigram' or a tokenizer file; {path} does not exist")
    return tokenizers.load(path)


def prepare_data(cfg: TrainConfig, run: Path):
    """Tokenise the corpus once into run/train.bin and run/val.bin; reuse them
    when they were made from the same data spec and tokenizer."""
    from . import tokenizers

    tok_path, train_path, val_path = run / "tokenizer.json", run / "train.bin", run / "val.bin"
    source_path = run / "data.json"
    if all(p.exists() for p in (tok_path, train_path, val_path, source_path)):
        if json.loads(source_path.read_text()) == _source_key(cfg):
            return tokenizers.load(tok_path), read_token_bin(train_path), read_token_bin(val_path)
    text = load_text(cfg.data, cfg.data_dir or None)
    tok = build_tokenizer(cfg, text)
    ids = np.asarray(tok.encode(text))
    train_ids, val_ids = train_val_split(ids, 1 - cfg.val_frac)
    if len(val_ids) <= cfg.block_size or len(train_ids) <= cfg.block_size:
        raise ScratchError(f"the corpus gives {len(ids)} tokens, too few for block size {cfg.block_size} "
                           f"with a {cfg.val_frac:.0%} validation split: use more text or a smaller --block-size")
    run.mkdir(parents=True, exist_ok=True)
    tok.save(tok_path)
    write_token_bin(train_ids, train_path, tok.vocab_size)
    write_token_bin(val_ids, val_path, tok.vocab_size)
    source_path.write_text(json.dumps(_source_key(cfg)))  # last: marks the files complete
    return tok, read_token_bin(train_path), read_token_bin(val_path)


def _source_key(cfg: TrainConfig) -> dict:
    """What the token files were made from; other values mean tokenising again."""
    return {"data": str(cfg.data), "tokenizer": cfg.tokenizer, "bpe_vocab_size": cfg.bpe_vocab_size, "val_frac": cfg.val_frac}


# ---- model and optimizer ------------------------------------------------------------
def llama_config(cfg: TrainConfig, vocab_size: int):
    """The Llama of a run's sizes: SwiGLU's hidden width about 8/3 of the model's (its three matrices then
    weigh what GPT's two 4× matrices do), rounded up to a multiple of 64; tied embeddings as the GPT's."""
    from .models.llama import LlamaConfig

    n_kv = cfg.n_kv_head or (cfg.n_head // 2 if cfg.n_head % 2 == 0 else cfg.n_head)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=-(-8 * cfg.n_embd // 192) * 64,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=n_kv,
                       max_position_embeddings=cfg.block_size, tie_word_embeddings=True)


def build_model(cfg: TrainConfig, vocab_size: int):
    if cfg.arch == "llama":
        from .models.llama import Llama

        return Llama(llama_config(cfg, vocab_size), seed=cfg.seed)
    gcfg = GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, positional=cfg.positional)
    return GPT(gcfg, seed=cfg.seed)


def build_optimizer(model: GPT, cfg: TrainConfig) -> AdamW:
    return adamw_for(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)


def estimate_loss(model: GPT, splits: dict, cfg: TrainConfig, step: int) -> dict:
    """Mean loss over ``eval_iters`` batches per split, from a generator of its own."""
    out = {}
    model.eval()
    with no_grad():
        for name, tokens in splits.items():
            rng = np.random.default_rng([cfg.seed, step, len(name)])
            losses = [model(*get_batch(tokens, cfg.batch_size, cfg.block_size, rng))[1].item()
                      for _ in range(cfg.eval_iters)]
            out[name] = float(np.mean(losses))
    model.train()
    return out


# ---- the run -------------------------------------------------------------------------
class Trainer(TrainingLoop):
    """A GPT's run: ``max_iters`` steps of random batches, evaluated (and saved)
    every ``eval_interval`` steps; the loop itself is :class:`~scratchllm.loop.TrainingLoop`."""

    config_class = TrainConfig
    # Only the length of the run, its bookkeeping and the output may change on resume.
    resumable = ("max_iters", "eval_interval", "eval_iters", "sample_tokens", "snapshots", "progress", "out")

    def __init__(self, cfg: TrainConfig, resume: bool = False, world=None):
        given_decay = cfg.lr_decay_iters
        cfg, state = self.open_run(cfg, resume, world)
        if state is not None:
            # The schedule's length stays the run's own, unless given again (it then changes from
            # this step on); runs saved before it was a setting decayed over their max_iters.
            saved = state["train_config"]
            cfg.lr_decay_iters = given_decay or saved.get("lr_decay_iters") or saved["max_iters"]
        if cfg.lr_decay_iters < 0:
            raise ScratchError(f"--lr-decay-iters must be at least 1 (or 0: --max-iters), not {cfg.lr_decay_iters}")
        if not cfg.lr_decay_iters:
            cfg = replace(cfg, lr_decay_iters=cfg.max_iters)  # saved with the run, so a resume keeps it
        self.cfg = cfg
        if cfg.threads < 1:
            raise ScratchError(f"--threads must be at least 1, not {cfg.threads}")
        with self.world.root_first():  # in a shared folder, rank 0 writes the token files, the others reuse them
            self.tokenizer, self.train_ids, self.val_ids = prepare_data(cfg, self.run)
        model = build_model(cfg, self.tokenizer.vocab_size)
        self.set_model(model, build_optimizer(model, cfg))
        self.schedule = CosineWithWarmup(cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
        self.batch_rng = np.random.default_rng([cfg.seed, 1])
        self.resumed = resume  # the resume step gets a log line of its own
        if resume:
            self.restore()
        self.start_log(self.step - 1 if resume else None)  # the resume step's line is written again
        self.world.check_same("settings", asdict(cfg) | {"progress": None, "step": self.step,
                                                         "batch_rng": self.batch_rng.bit_generator.state})
        self.world.check_same("data or weights", {"train": self.train_ids, "val": self.val_ids,
                                                   "vocab": self.tokenizer.vocab_size} | self.model.state_dict())

    # ---- what the checkpoint holds besides the loop's own ----------------------------------
    def rng_states(self) -> dict:
        return {"batch": self.batch_rng.bit_generator.state} | super().rng_states()

    def load_extra_state(self, state: dict):
        self.batch_rng.bit_generator.state = state["rng"]["batch"]

    # ---- one step --------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return self.schedule(step)

    def train_step(self) -> float:
        """``grad_accum`` random micro-batches, one optimizer step. Returns the mean loss."""
        cfg = self.cfg
        return self.update([get_batch(self.train_ids, cfg.batch_size, cfg.block_size, self.batch_rng)
                            for _ in range(cfg.grad_accum)])

    def advance(self) -> tuple[float, int]:
        cfg = self.cfg
        return self.train_step(), cfg.batch_size * cfg.block_size * cfg.grad_accum

    def finished(self) -> bool:
        return self.step >= self.cfg.max_iters

    def planned_steps(self) -> int:
        return self.cfg.max_iters

    def where(self) -> str:
        return f"step {self.step}"

    # ---- evaluation, between steps ---------------------------------------------------------
    def evaluate(self) -> dict:
        losses = estimate_loss(self.model, {"train": self.train_ids, "val": self.val_ids}, self.cfg, self.step)
        record = {"step": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "lr": self.schedule(min(self.step, self.cfg.max_iters - 1))}
        return record

    def between_steps(self):
        """Every ``eval_interval`` steps, at the end, and at the step a run resumed at:
        evaluate and log (rank 0); every ``eval_interval`` steps and at the end: save."""
        if self.bar is None:
            self.open_bar(total=self.cfg.max_iters, initial=self.step, unit="it")
        due = self.step % self.cfg.eval_interval == 0 or self.finished()
        resumed_here, self.resumed = self.resumed, False
        if (due or resumed_here) and self.world.is_root:
            self.record = self.evaluate() | {"tokens_per_s": round(self.tokens_per_s, 1)}
            if resumed_here:
                self.record["resumed"] = True
            self.log(self.record)
            self.bar.write(f"step {self.step}: train loss {self.record['train_loss']:.4f}, "
                           f"val loss {self.record['val_loss']:.4f}")
        if due and self.step > 0 and self.last_saved != self.step:
            self.save()


def train(cfg: TrainConfig, resume: bool = False, echo=print) -> Trainer:
    trainer = Trainer(cfg, resume=resume)
    trainer.fit(echo=echo)
    return trainer
