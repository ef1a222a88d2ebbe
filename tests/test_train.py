"""The GPT training loop: exact resume, interruption, gradient accumulation, bad input."""
import json
import os
import signal

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import train as T
from scratchllm.cli import main

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


def tiny_config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT)
    base = dict(data=str(corpus), out=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=16, block_size=8,
                batch_size=4, max_iters=6, eval_interval=3, eval_iters=2, warmup_iters=2, progress=False,
                sample_tokens=0)
    base.update(kw)
    return T.TrainConfig(**base)


def weights(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def moments(trainer):
    return {k: v.copy() for k, v in trainer.opt.state_dict()["state"].items()}


@pytest.mark.parametrize("dropout,threads", [(0.0, 1), (0.2, 1), (0.0, 2), (0.2, 2)])
def test_resume_is_bit_identical(tmp_path, dropout, threads):
    kw = dict(dropout=dropout, threads=threads, lr_decay_iters=6)  # the same schedule, stopped at 3 in run b
    full = T.train(tiny_config(tmp_path / "a", **kw), echo=lambda *a: None)
    T.train(tiny_config(tmp_path / "b", max_iters=3, **kw), echo=lambda *a: None)
    resumed = T.train(tiny_config(tmp_path / "b", max_iters=6, **kw), resume=True, echo=lambda *a: None)
    assert resumed.step == full.step == 6
    for k, v in weights(full).items():
        np.testing.assert_array_equal(weights(resumed)[k], v, err_msg=k)
    for k, v in moments(full).items():
        np.testing.assert_array_equal(moments(resumed)[k], v, err_msg=k)


def test_interrupt_saves_and_resumes_exactly(tmp_path, monkeypatch):
    full = T.train(tiny_config(tmp_path / "a", eval_interval=100), echo=lambda *a: None)
    cfg = tiny_config(tmp_path / "b", eval_interval=100)
    trainer = T.Trainer(cfg)
    real_step = trainer.train_step

    def step_then_interrupt():
        loss = real_step()
        if trainer.step == 4:  # as if the user pressed Ctrl-C during step 4
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    trainer.train_step = step_then_interrupt
    said = []
    trainer.fit(echo=said.append)
    assert trainer.step == 4 and "interrupted at step 4" in said[0]
    resumed = T.train(cfg, resume=True, echo=lambda *a: None)
    for k, v in weights(full).items():
        np.testing.assert_array_equal(weights(resumed)[k], v, err_msg=k)


def test_grad_accumulation_equals_bigger_batch(tmp_path, monkeypatch):
    """Two micro-batches of 4 give the gradient of one batch of 8 with the same rows."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (8, 8))
    y = rng.integers(0, 10, (8, 8))
    grads = {}
    for accum, bs in ((1, 8), (2, 4)):
        cfg = tiny_config(tmp_path / f"acc{accum}", grad_accum=accum, batch_size=bs, grad_clip=0.0)
        trainer = T.Trainer(cfg)
        parts = iter([(x[i:i + bs], y[i:i + bs]) for i in range(0, 8, bs)])
        monkeypatch.setattr(T, "get_batch", lambda *a, **k: next(parts))
        trainer.opt.step = lambda: None  # keep the gradients to compare
        trainer.train_step()
        grads[accum] = {n: p.grad.copy() for n, p in trainer.model.named_parameters()}
    for n, g in grads[1].items():
        np.testing.assert_allclose(grads[2][n], g, rtol=1e-5, atol=1e-7, err_msg=n)


def test_log_and_checkpoint_written(tmp_path):
    tr = T.train(tiny_config(tmp_path), echo=lambda *a: None)
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 3, 6]
    assert all(np.isfinite(r["val_loss"]) for r in log)
    model = sl.load(run)  # the run directory resolves to run/ckpt
    x = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(model(x).data, tr.model(x).data)
    assert log[-1]["val_loss"] < log[0]["val_loss"]


def test_nan_loss_stops_with_clear_error(tmp_path):
    tr = T.Trainer(tiny_config(tmp_path, max_iters=50, eval_interval=2))
    real_step = tr.train_step

    def poisoned_step():
        if tr.step == 3:  # a weight turns NaN, as after a diverging update
            tr.model.transformer.ln_f.weight.data[0] = np.nan
        return real_step()

    tr.train_step = poisoned_step
    with pytest.raises(sl.ScratchError, match=r"loss became nan at step 3.*last good checkpoint \(step 2\)"):
        tr.fit(echo=lambda *a: None)
    saved = sl.load(tmp_path / "run")  # the checkpoint on disk is the last good one
    assert json.loads((tmp_path / "run" / "ckpt" / "train_state.json").read_text())["step"] == 2
    assert all(np.isfinite(p.data).all() for p in saved.parameters())


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/file.txt"], "not found"),
    (["--data", "EMPTY"], "empty"),
    (["--data", "SHORT", "--block-size", "64"], "too few"),
    (["--batch-size", "0"], "at least 1"),
    (["--n-embd", "30", "--n-head", "4"], "divisible"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("abc def")
    args = [a.replace("EMPTY", str(tmp_path / "empty.txt")).replace("SHORT", str(tmp_path / "short.txt")) for a in args]
    code = main(["train", "--out", str(tmp_path / "run"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_resume_without_checkpoint_is_clear(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "nothing"), "--resume", "--no-progress"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_threads_below_one_is_an_error(tmp_path):
    with pytest.raises(sl.ScratchError, match="--threads"):
        T.Trainer(tiny_config(tmp_path, threads=0))


def quiet(*a):
    pass


def test_resume_to_more_steps_equals_a_fresh_run_with_the_same_schedule(tmp_path):
    # The cosine schedule's length is its own setting (lr_decay_iters, default: the
    # first run's max_iters), kept on resume: going on from 6 to 12 steps is, bit
    # for bit, a fresh 12-step run whose schedule ends at step 6.
    kw = dict(warmup_iters=2, lr=3e-3, min_lr=3e-4, eval_interval=3)
    fresh = T.train(tiny_config(tmp_path / "a", max_iters=12, lr_decay_iters=6, **kw), echo=quiet)
    T.train(tiny_config(tmp_path / "b", max_iters=6, **kw), echo=quiet)
    resumed = T.train(tiny_config(tmp_path / "b", max_iters=12, **kw), resume=True, echo=quiet)
    assert resumed.step == fresh.step == 12 and resumed.cfg.lr_decay_iters == 6
    for k, v in weights(fresh).items():
        np.testing.assert_array_equal(weights(resumed)[k], v, err_msg=k)
    for k, v in moments(fresh).items():
        np.testing.assert_array_equal(moments(resumed)[k], v, err_msg=k)
    # where the difference would show: a schedule over all 12 steps ends elsewhere
    longer = T.train(tiny_config(tmp_path / "c", max_iters=12, **kw), echo=quiet)
    assert longer.cfg.lr_decay_iters == 12
    assert any(not np.array_equal(v, weights(longer)[k]) for k, v in weights(fresh).items())


def test_lr_decay_iters_is_kept_in_the_checkpoint_and_may_be_given_again(tmp_path, capsys):
    run = tmp_path / "run"
    (tmp_path / "c.txt").write_text(TEXT)
    base = ["train", "--data", str(tmp_path / "c.txt"), "--out", str(run), "--n-layer", "1", "--n-head", "2",
            "--n-embd", "16", "--block-size", "8", "--batch-size", "4", "--eval-interval", "3", "--eval-iters", "1",
            "--sample-tokens", "0", "--no-progress"]

    def saved():
        return json.loads((run / "ckpt" / "train_state.json").read_text())["train_config"]["lr_decay_iters"]

    assert main(base + ["--max-iters", "3"]) == 0 and saved() == 3
    assert main(base + ["--max-iters", "6", "--resume"]) == 0 and saved() == 3
    assert main(base + ["--max-iters", "9", "--resume", "--lr-decay-iters", "9"]) == 0 and saved() == 9
    with pytest.raises(sl.ScratchError, match="--lr-decay-iters"):
        T.Trainer(tiny_config(tmp_path / "bad", lr_decay_iters=-1))


def test_a_checkpoint_from_before_lr_decay_iters_keeps_its_schedule(tmp_path):
    # Saved without the setting: its schedule ran over its max_iters then.
    T.train(tiny_config(tmp_path, max_iters=3), echo=quiet)
    state_path = tmp_path / "run" / "ckpt" / "train_state.json"
    state = json.loads(state_path.read_text())
    del state["train_config"]["lr_decay_iters"]
    state_path.write_text(json.dumps(state))
    assert T.Trainer(tiny_config(tmp_path, max_iters=9), resume=True).cfg.lr_decay_iters == 3


def log_steps(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_resumed_run_logs_its_resume_step_once(tmp_path):
    T.train(tiny_config(tmp_path, max_iters=3), echo=quiet)
    T.train(tiny_config(tmp_path, max_iters=6), resume=True, echo=quiet)
    assert log_steps(tmp_path / "run") == [0, 3, 6]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r.get("resumed", False) for r in log] == [False, True, False]


def test_an_interrupted_run_logs_where_it_resumed(tmp_path):
    cfg = tiny_config(tmp_path, eval_interval=3)
    trainer = T.Trainer(cfg)
    real_step = trainer.train_step

    def step_then_interrupt():
        loss = real_step()
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    trainer.train_step = step_then_interrupt
    trainer.fit(echo=quiet)
    T.train(cfg, resume=True, echo=quiet)
    assert log_steps(tmp_path / "run") == [0, 3, 4, 6]


def test_a_fresh_run_in_an_old_directory_starts_a_fresh_log(tmp_path):
    T.train(tiny_config(tmp_path, max_iters=6), echo=quiet)
    T.train(tiny_config(tmp_path, max_iters=3), echo=quiet)
    assert log_steps(tmp_path / "run") == [0, 3]
