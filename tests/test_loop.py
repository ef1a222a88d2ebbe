"""The training loop on its own: a toy model plugged into TrainingLoop through the
hooks a trainer fills in gets checkpoints, exact resume, the log, Ctrl-C and the
NaN stop from the loop (the GPT and Transformer trainers' tests check the same
through their own runs)."""
import json
import os
import signal
from dataclasses import dataclass

import numpy as np
import pytest

from scratchllm import functional as F
from scratchllm import nn
from scratchllm.errors import ScratchError
from scratchllm.loop import TrainingLoop
from scratchllm.optim import SGD
from scratchllm.tensor import Tensor


class Toy(nn.Module):
    kind = "toy-loop-test"

    def __init__(self):
        self.fc = nn.Linear(4, 3, rng=np.random.default_rng(0))

    def forward(self, x, y):
        logits = self.fc(Tensor(np.asarray(x, dtype=np.float32)))
        return logits, F.cross_entropy(logits, y)

    def config_dict(self):
        return {}


@dataclass
class ToyConfig:
    out: str
    steps: int = 8
    lr: float = 0.5
    threads: int = 1
    grad_clip: float = 1.0
    progress: bool = False


class ToyRun(TrainingLoop):
    config_class = ToyConfig
    resumable = ("steps", "out")

    def __init__(self, cfg, resume=False, threads=1):
        cfg, state = self.open_run(cfg, resume)
        self.cfg = cfg
        model = Toy()
        self.set_model(model, SGD(model.parameters(), lr=cfg.lr))
        self.rng = np.random.default_rng(1)
        if state is not None:
            self.restore()
        self.start_log(self.step if resume else None)

    def rng_states(self):
        return {"batch": self.rng.bit_generator.state} | super().rng_states()

    def load_extra_state(self, state):
        self.rng.bit_generator.state = state["rng"]["batch"]

    def lr_at(self, step):
        return self.cfg.lr / (1 + step)

    def advance(self):
        x = self.rng.normal(size=(8, 4))
        return self.update([(x, (x[:, 0] > 0).astype(np.int64))]), 8

    def between_steps(self):
        if self.step % 4 == 0 or self.finished():
            self.log({"step": self.step})
            if self.step and self.last_saved != self.step:
                self.save()

    def finished(self):
        return self.step >= self.cfg.steps

    def where(self):
        return f"step {self.step}"


def weights(run):
    return {k: v.copy() for k, v in run.model.state_dict().items()}


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path):
    full = ToyRun(ToyConfig(str(tmp_path / "a")))
    full.fit(echo=lambda *a: None)
    run = ToyRun(ToyConfig(str(tmp_path / "b")))
    real = run.advance

    def advance_then_interrupt():
        out = real()
        if run.step == 3:  # as if Ctrl-C were pressed during step 3
            os.kill(os.getpid(), signal.SIGINT)
        return out

    run.advance = advance_then_interrupt
    said = []
    run.fit(echo=said.append)
    assert run.step == 3 and said == [f"interrupted at step 3; saved to {tmp_path / 'b' / 'ckpt'}. "
                                      f"Resume with --resume --out {tmp_path / 'b'}"]
    resumed = ToyRun(ToyConfig(str(tmp_path / "b")), resume=True)
    assert resumed.step == 3
    resumed.fit(echo=lambda *a: None)
    assert resumed.step == 8
    for k, v in weights(full).items():
        np.testing.assert_array_equal(weights(resumed)[k], v, err_msg=k)
    log = [json.loads(x)["step"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log == [0, 4, 8]


def test_a_nan_loss_stops_at_the_last_good_checkpoint(tmp_path):
    run = ToyRun(ToyConfig(str(tmp_path / "r"), steps=20))
    real = run.advance

    def poisoned():
        if run.step == 6:
            run.model.fc.weight.data[0, 0] = np.nan
        return real()

    run.advance = poisoned
    with pytest.raises(ScratchError, match=r"^loss became nan at step 6; stopped, the last good checkpoint "
                                           r"\(step 4\) is in .*ckpt\. Try a lower --lr or --grad-clip\.$"):
        run.fit(echo=lambda *a: None)
    state = json.loads((tmp_path / "r" / "ckpt" / "train_state.json").read_text())
    assert state["step"] == 4 and state["train_config"]["steps"] == 20


def test_a_fresh_run_in_an_old_folder_starts_a_fresh_log(tmp_path):
    ToyRun(ToyConfig(str(tmp_path / "r"))).fit(echo=lambda *a: None)
    ToyRun(ToyConfig(str(tmp_path / "r"), steps=4)).fit(echo=lambda *a: None)
    log = [json.loads(x)["step"] for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log == [0, 4]
