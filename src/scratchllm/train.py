"""The GPT training loop: data once into token files, AdamW with warmup +
cosine, evaluation, JSONL logs, atomic checkpoints and exact resume.

A run directory (``--out``, default ``out/``) holds::

    train.bin, val.bin (+ .json)   token ids, written once, read as memmaps
    ckpt/                          the checkpoint (config, weights, tokenizer,
                                   optimizer moments, RNG states, step)
    log.jsonl                      one line per evaluation
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
import math
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import checkpoint
from .distributed import DistributedBackward, SameOnAllRanks, world as current_world
from .data import get_batch, load_text, read_token_bin, train_val_split, write_token_bin
from .errors import ScratchError
from .models.gpt import GPT, GPTConfig
from .optim import AdamW, CosineWithWarmup, clip_grad_norm
from .sharded import ShardedBackward
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
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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
def build_model(cfg: TrainConfig, vocab_size: int) -> GPT:
    gcfg = GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, positional=cfg.positional)
    return GPT(gcfg, seed=cfg.seed)


def build_optimizer(model: GPT, cfg: TrainConfig) -> AdamW:
    """Weight decay on matrices only; biases and LayerNorm gains are not decayed."""
    params = model.parameters()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


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


# ---- pieces any training loop needs ----------------------------------------------------
class StopOnInterrupt:
    """``with StopOnInterrupt() as stop:`` Ctrl-C sets ``stop.requested``
    instead of raising, so the loop can finish its step, save and leave."""

    requested = False

    def __enter__(self):
        self.requested = False
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False


def trim_log(path: Path, step: int):
    """Drop JSONL log lines past ``step`` (the steps a crash threw away before a resume)."""
    if not path.exists():
        return
    from .plot import read_log  # the one reader of run logs: a corrupt line is named, not a traceback

    keep = [json.dumps(r) for r in read_log(path) if r["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def append_log(path: Path, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def dropout_rng(model):
    """The generator the model's Dropout modules draw from (built models share one), or None."""
    from .nn import Dropout

    for _, m in model.named_modules():
        if isinstance(m, Dropout) and m.rng is not None:
            return m.rng
    return None


# ---- the run -------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, world=None):
        self.run = Path(cfg.out)
        self.ckpt_dir = self.run / "ckpt"
        self.world = world or current_world()  # MPI ranks (distributed.py), or this process alone
        if resume:
            cfg = self._load_config_for_resume(cfg)
        if cfg.lr_decay_iters < 0:
            raise ScratchError(f"--lr-decay-iters must be at least 1 (or 0: --max-iters), not {cfg.lr_decay_iters}")
        if not cfg.lr_decay_iters:
            cfg = replace(cfg, lr_decay_iters=cfg.max_iters)  # saved with the run, so a resume keeps it
        self.cfg = cfg
        if cfg.threads < 1:
            raise ScratchError(f"--threads must be at least 1, not {cfg.threads}")
        with self.world.root_first():  # in a shared folder, rank 0 writes the token files, the others reuse them
            self.tokenizer, self.train_ids, self.val_ids = prepare_data(cfg, self.run)
        self.model = build_model(cfg, self.tokenizer.vocab_size)
        self.opt = build_optimizer(self.model, cfg)
        self.schedule = CosineWithWarmup(cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
        self.batch_rng = np.random.default_rng([cfg.seed, 1])
        self.dropout_rng = dropout_rng(self.model)
        self.sharded = ShardedBackward(self.model, cfg.threads) if self.world.size == 1 \
            else DistributedBackward(self.model, cfg.threads, self.world)
        self.step = 0
        self.last_saved = None
        self.resumed = resume
        if resume:
            self._restore()
        self.log_path = self.run / "log.jsonl"
        if self.world.is_root:
            if resume:  # lines from the resume step on are redone (or were lost with the steps after the checkpoint)
                trim_log(self.log_path, self.step - 1)
            else:  # a run started afresh in an old directory: a fresh log
                self.log_path.unlink(missing_ok=True)
        self.world.check_same("settings", asdict(cfg) | {"progress": None, "step": self.step,
                                                         "batch_rng": self.batch_rng.bit_generator.state})
        self.world.check_same("data or weights", {"train": self.train_ids, "val": self.val_ids,
                                                   "vocab": self.tokenizer.vocab_size} | self.model.state_dict())

    # ---- checkpoints --------------------------------------------------------------
    def _load_config_for_resume(self, cfg: TrainConfig) -> TrainConfig:
        state = checkpoint.read_train_state(self.ckpt_dir)
        saved = TrainConfig.from_dict({"threads": 1} | state["train_config"])  # runs from before threads: 1
        # The schedule's length stays the run's own, unless given again (it then changes from
        # this step on); runs saved before it was a setting decayed over their max_iters.
        saved.lr_decay_iters = cfg.lr_decay_iters or saved.lr_decay_iters or saved.max_iters
        # The batch was cut into ranks × threads shards; with as many now the run goes on bit for bit.
        shards = state.get("shards", saved.threads)
        saved.threads = max(1, shards // self.world.size)
        # Only the length of the run, its bookkeeping and the output may change on resume.
        for name in ("max_iters", "eval_interval", "eval_iters", "sample_tokens", "progress"):
            setattr(saved, name, getattr(cfg, name))
        saved.out = cfg.out
        return saved

    def _restore(self):
        state = checkpoint.load_training(self.ckpt_dir, self.model, self.opt)
        self.step = state["step"]
        self.batch_rng.bit_generator.state = state["rng"]["batch"]
        if self.dropout_rng is not None and state["rng"].get("dropout"):
            self.dropout_rng.bit_generator.state = state["rng"]["dropout"]
        self.last_saved = self.step

    def save(self):
        state = {
            "step": self.step,
            "train_config": asdict(self.cfg),
            "shards": self.cfg.threads * self.world.size,
            "rng": {"batch": self.batch_rng.bit_generator.state,
                    "dropout": self.dropout_rng.bit_generator.state if self.dropout_rng is not None else None},
        }
        if self.world.is_root:  # every rank holds the same state: rank 0 writes it
            checkpoint.save_training(self.ckpt_dir, self.model, self.opt, state, tokenizer=self.tokenizer)
        self.last_saved = self.step

    # ---- one step ------------------------------------------------------------------
    def train_step(self) -> float:
        """Forward, backward over ``grad_accum`` micro-batches, clip, AdamW. Returns the mean loss."""
        cfg = self.cfg
        self.opt.lr = self.schedule(self.step)
        self.model.zero_grad()
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = get_batch(self.train_ids, cfg.batch_size, cfg.block_size, self.batch_rng)
            # Each micro-batch's mean loss divided by their number: the summed
            # gradient equals that of one batch grad_accum times bigger.
            total += self.sharded.step(x, y, scale=1.0 / cfg.grad_accum)
        loss = total / cfg.grad_accum
        if not math.isfinite(loss):  # the loss of the whole batch: every rank stops here alike
            raise SameOnAllRanks(self._nan_message(loss))
        if cfg.grad_clip:
            clip_grad_norm(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return loss

    def _nan_message(self, loss) -> str:
        where = f"the last good checkpoint (step {self.last_saved}) is in {self.ckpt_dir}" if self.last_saved is not None \
            else "no checkpoint was saved yet"
        return f"loss became {loss} at step {self.step}; stopped, {where}. Try a lower --lr or --grad-clip."

    def evaluate(self) -> dict:
        losses = estimate_loss(self.model, {"train": self.train_ids, "val": self.val_ids}, self.cfg, self.step)
        record = {"step": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "lr": self.schedule(min(self.step, self.cfg.max_iters - 1))}
        return record

    # ---- the loop ------------------------------------------------------------------
    def fit(self, echo=print) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
        bar = tqdm(total=cfg.max_iters, initial=self.step, disable=not cfg.progress or not self.world.is_root,
                   unit="it", dynamic_ncols=True)
        record, tps, last_loss = {}, 0.0, float("nan")
        with StopOnInterrupt() as stop:  # Ctrl-C: finish the step, then save and leave
            try:
                while True:
                    at_end = self.step >= cfg.max_iters
                    resumed_here, self.resumed = self.resumed, False
                    if (self.step % cfg.eval_interval == 0 or at_end or resumed_here) and self.world.is_root:
                        record = self.evaluate() | {"tokens_per_s": round(tps, 1)}
                        if resumed_here:
                            record["resumed"] = True
                        append_log(self.log_path, record)
                        bar.write(f"step {self.step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
                    if self.step % cfg.eval_interval == 0 or at_end:
                        if self.step > 0 and self.last_saved != self.step:
                            self.save()
                    if at_end or self.world.any(stop.requested):  # all ranks stop at the same step
                        break
                    t0 = time.perf_counter()
                    last_loss = self.train_step()
                    tps = tokens_per_step / (time.perf_counter() - t0)
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            finally:
                bar.close()
        if not at_end:
            if self.last_saved != self.step:
                self.save()
            if self.world.is_root:
                echo(f"interrupted at step {self.step}; saved to {self.ckpt_dir}. Resume with --resume --out {self.run}")
        return record


def train(cfg: TrainConfig, resume: bool = False, echo=print) -> Trainer:
    trainer = Trainer(cfg, resume=resume)
    trainer.fit(echo=echo)
    return trainer
