"""The training loop the GPT and the Transformer plug into: checkpoints and
exact resume, the run's log, the NaN stop, Ctrl-C, the progress bar and the
learning-rate schedule, in one process or on every rank of an MPI job.

A trainer subclasses :class:`TrainingLoop` and says only what is its own::

    lr_at(step)          the schedule: the learning rate of a step
    advance()            one step: its batch through update(); -> (loss, tokens)
    between_steps()      what is due before the next step: evaluate, log, save, open an epoch
    finished()           whether every step of the run is done
    where()              the run's position in words: "step 40", "epoch 2, batch 7 (step 247)"
    planned_steps()      how many steps the run will take, as far as known (where the snapshots go)
    rng_states() / extra_state() / load_extra_state(state)
                         its own part of the checkpoint (a batch generator, an epoch ...)

and :meth:`TrainingLoop.fit` runs it::

    while True:
        between_steps()                       # evaluate / log / save when due
        if finished() or a stop was asked:    # Ctrl-C, --max-steps, --minutes: every rank alike
            break
        loss, tokens = advance()              # update(): lr, backward, NaN stop, clip, optimizer
    save if not saved at this step; say where it stopped and how to resume

With ``cfg.snapshots`` N > 0, the weights at N steps of the run (0, the last,
and log-spaced ones between: :func:`scratchllm.snapshots.snapshot_steps`) are
kept in ``run/snapshots/`` as they are reached, and at a step the run stops at;
a resumed run keeps those up to its step, a fresh one starts without any.

A checkpoint (``run/ckpt``) holds the weights, the optimizer's moments, the
step, the config, the generators' states and the trainer's own position, so a
resumed run is bit-identical to one never stopped. Rank 0 alone writes files
and speaks; every rank holds the same state.
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, fields
from pathlib import Path

from . import checkpoint
from . import snapshots as snap
from .distributed import DistributedBackward, SameOnAllRanks, world as current_world
from .errors import loss_not_finite
from .optim import clip_grad_norm
from .sharded import ShardedBackward


def _quiet(*args):
    pass


class TrainingLoop:
    """What every training run shares; subclasses set ``cfg`` (a config dataclass
    with ``out``, ``threads``, ``grad_clip`` and ``progress``) and the hooks above."""

    config_class = None  # the subclass's config dataclass
    tokenizer = None  # saved in the checkpoint beside the weights, if the trainer has one
    resumable: tuple = ()  # config fields a resumed run takes from the command, not the checkpoint

    # ---- setting up ------------------------------------------------------------------
    def open_run(self, cfg, resume: bool, world=None, echo=print):
        """The run directory, the ranks, and on resume the saved config (with the
        fields a resumed run may change taken from ``cfg``). Returns (cfg, state or None)."""
        self.run = Path(cfg.out)
        self.ckpt_dir = self.run / "ckpt"
        self.world = world or current_world()  # MPI ranks (distributed.py), or this process alone
        self.echo = echo if self.world.is_root else _quiet
        self.record: dict = {}  # the last evaluation's figures, which fit() returns
        self.bar = None
        snap.check_count(getattr(cfg, "snapshots", 0))
        self.resuming = resume  # snapshots past the resumed step are dropped, or all of them in a fresh run
        self.snapshot_plan = None  # the steps whose weights are kept, once the run's length is known
        if not resume:
            return cfg, None
        state = checkpoint.read_train_state(self.ckpt_dir)
        saved = {"threads": 1} | state["train_config"]  # runs from before the threads setting had 1
        known = {f.name for f in fields(self.config_class)}  # a setting this version lacks is dropped
        saved = self.config_class(**{k: v for k, v in saved.items() if k in known})
        for name in self.resumable:
            setattr(saved, name, getattr(cfg, name))
        # The batch was cut into ranks × threads shards; with as many now the run goes on bit for bit.
        saved.threads = max(1, state.get("shards", saved.threads) // self.world.size)
        return saved, state

    def set_model(self, model, optimizer, loss=None, ignore_index: int = -100):
        """The model, its optimizer, and what computes the gradients: ``loss`` (the model
        itself by default) over this process's threads, or over every rank's."""
        self.model, self.opt = model, optimizer
        self.dropout_rng = dropout_rng(model)
        loss = model if loss is None else loss
        self.backward = ShardedBackward(loss, self.cfg.threads, ignore_index) if self.world.size == 1 \
            else DistributedBackward(loss, self.cfg.threads, self.world, ignore_index)
        self.step = 0
        self.last_saved = None  # the step of the checkpoint on disk, if any
        self.last_save_time = time.perf_counter()

    def start_log(self, keep_through: int | None):
        """run/log.jsonl: lines up to step ``keep_through`` kept (a resume redoes the
        rest, or they were lost with the steps after the checkpoint); None: a fresh log."""
        self.run.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run / "log.jsonl"
        if not self.world.is_root:
            return
        if keep_through is None:  # a run started afresh in an old directory
            self.log_path.unlink(missing_ok=True)
        else:
            trim_log(self.log_path, keep_through)

    def log(self, record: dict):
        if self.world.is_root:
            append_log(self.log_path, record)

    # ---- checkpoints -----------------------------------------------------------------
    def save(self):
        state = {"step": self.step, "train_config": asdict(self.cfg), "shards": self.cfg.threads * self.world.size,
                 "rng": self.rng_states()} | self.extra_state()
        if self.world.is_root:  # every rank holds the same state: rank 0 writes it
            checkpoint.save_training(self.ckpt_dir, self.model, self.opt, state, tokenizer=self.tokenizer)
        self.last_saved = self.step
        self.last_save_time = time.perf_counter()

    def restore(self):
        state = checkpoint.load_training(self.ckpt_dir, self.model, self.opt)
        self.step = state["step"]
        if self.dropout_rng is not None and state["rng"].get("dropout"):
            self.dropout_rng.bit_generator.state = state["rng"]["dropout"]
        self.load_extra_state(state)
        self.last_saved = self.step

    def rng_states(self) -> dict:
        return {"dropout": self.dropout_rng.bit_generator.state if self.dropout_rng is not None else None}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict):
        pass

    # ---- one optimizer step ------------------------------------------------------------
    def update(self, batches: list) -> float:
        """One optimizer step over the micro-batches ``batches`` [(x, y), ...]: set the
        learning rate, sum their gradients, stop on a NaN loss, clip, step. Returns the mean loss."""
        self.opt.lr = self.lr_at(self.step)
        self.model.zero_grad()
        total = 0.0
        for x, y in batches:
            # Each micro-batch's mean loss divided by their number: the summed
            # gradient equals that of one batch len(batches) times bigger.
            total += self.backward.step(x, y, scale=1.0 / len(batches))
        loss = total / len(batches)
        if not math.isfinite(loss):  # the loss of the whole batch: every rank stops here alike
            raise SameOnAllRanks(self.nan_message(loss))
        if self.cfg.grad_clip:
            clip_grad_norm(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return loss

    def nan_message(self, loss) -> str:
        where = f"the last good checkpoint (step {self.last_saved}) is in {self.ckpt_dir}" \
            if self.last_saved is not None else "no checkpoint was saved yet"
        return loss_not_finite(loss, f"step {self.step}", where, "Try a lower --lr or --grad-clip.")

    # ---- the loop ----------------------------------------------------------------------
    def fit(self, echo=None) -> dict:
        """Train until finished() or a stop; return the last evaluation's figures."""
        if echo is not None:
            self.echo = echo if self.world.is_root else _quiet
        start, reason = time.perf_counter(), None
        self.tokens_per_s, self.last_save_time = 0.0, start
        self.open_snapshots()
        with StopOnInterrupt() as stop:  # Ctrl-C: finish the step, then save and leave
            try:
                while True:
                    self.between_steps()
                    self.take_snapshot(last=self.finished())
                    if self.finished():
                        break
                    reason = self.stop_reason(stop, start)
                    if self.world.any(reason is not None):  # all ranks stop at the same step
                        if self.world.size > 1:  # rank 0's reason (or another rank's Ctrl-C)
                            reason = self.world.comm.bcast(reason) or "interrupted"
                        break
                    t0 = time.perf_counter()
                    loss, tokens = self.advance()
                    dt = time.perf_counter() - t0
                    self.tokens_per_s = tokens / dt
                    if self.bar is not None:
                        self.bar.update(1)
                        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.tokens_per_s:,.0f}", refresh=False)
                    self.after_step(loss, tokens, dt)
            finally:
                self.close_bar()
        self.stopped = reason  # None: the run reached its end
        if reason is not None:
            if self.last_saved != self.step:
                self.save()
            self.take_snapshot(last=True)
            self.echo(f"{reason} at {self.where()}; saved to {self.ckpt_dir}. Resume with --resume --out {self.run}")
        else:  # the run's end
            self.report_snapshots()
        return self.record

    def stop_reason(self, stop, start: float) -> str | None:
        """Why the run should stop before the next step (None: it goes on)."""
        return "interrupted" if stop.requested else None

    def after_step(self, loss: float, tokens: int, seconds: float):
        pass

    def planned_steps(self) -> int | None:
        """The run's length in steps as far as it is known (None: unknown; the last step is kept anyway)."""
        return None

    # ---- snapshots ---------------------------------------------------------------------
    def snapshot_count(self) -> int:
        return getattr(self.cfg, "snapshots", 0)

    def open_snapshots(self):
        """A resumed run keeps the snapshots up to its step (it redoes the rest); a fresh one drops them
        all (even with none of its own: they would be another run's)."""
        if self.world.is_root:
            snap.trim_snapshots(self.run, self.step if self.resuming else None)
        self.resuming = True  # a second fit() goes on from here

    def take_snapshot(self, last: bool = False):
        """Keep the weights of this step if it is one of the planned steps, or ``last`` (the run ends here)."""
        n = self.snapshot_count()
        if not n:
            return
        if self.snapshot_plan is None:  # asked here, after between_steps() has opened the run (an epoch's batches)
            total = self.planned_steps()
            self.snapshot_plan = set(snap.snapshot_steps(total, n)) if total is not None else {0}
        if (last or self.step in self.snapshot_plan) and self.world.is_root \
                and not snap.snapshot_path(self.run, self.step).exists():  # one a resumed run kept: the same weights
            snap.write_snapshot(self.run, self.step, self.model)

    def report_snapshots(self):
        if not self.snapshot_count() or not self.world.is_root:
            return
        count, size = snap.snapshots_size(self.run)
        self.echo(f"snapshots: {count} steps' weights in {self.run / snap.DIR}, {size / 1e6:.1f} MB")

    # ---- the progress bar (rank 0's) -------------------------------------------------------
    def open_bar(self, **kw):
        from tqdm.auto import tqdm

        self.close_bar()
        self.bar = tqdm(disable=not self.cfg.progress or not self.world.is_root, dynamic_ncols=True, **kw)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---- pieces of a run -----------------------------------------------------------------------
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
