"""Snapshots over training: which steps are kept, and that snapshot k is exactly
the checkpoint of the same run stopped at step k (GPT and Transformer)."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchllm import snapshots as S
from scratchllm import train as T
from scratchllm import translation_train as TT
from scratchllm.cli import main
from scratchllm.errors import ScratchError
from scratchllm.files import read_safetensors

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


def gpt_config(d, **kw):
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT)
    base = dict(data=str(corpus), out=str(d / "run"), n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=4,
                max_iters=6, lr_decay_iters=6, eval_interval=100, eval_iters=1, warmup_iters=2, progress=False,
                sample_tokens=0, snapshots=7)
    return T.TrainConfig(**(base | kw))


def quiet(*a):
    pass


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- which steps ---------------------------------------------------------------------------
def test_the_kept_steps_by_hand():
    # 4 steps in 1..10000, evenly in log: 10000^(0, 1/3, 2/3, 1) = 1, 21.5, 464.2, 10000
    assert S.snapshot_steps(10000, 5) == [0, 1, 22, 464, 10000]
    assert S.snapshot_steps(100, 2) == [0, 100]
    assert S.snapshot_steps(5, 20) == [0, 1, 2, 3, 4, 5]  # more asked than there are steps: all of them
    assert S.snapshot_steps(5, 0) == []


@pytest.mark.parametrize("total,n", [(2000, 20), (30, 20), (21, 20), (19, 20), (1, 2), (7, 3), (100000, 50)])
def test_the_kept_steps_hold_the_first_and_last_and_are_denser_early(total, n):
    steps = S.snapshot_steps(total, n)
    assert steps[0] == 0 and steps[-1] == total
    assert len(steps) == min(n, total + 1) and steps == sorted(set(steps))
    gaps = np.diff(steps)
    assert np.all(gaps[1:] >= gaps[:-1] - 1)  # gaps grow (one step of rounding aside)
    if total >= 10 * n:
        assert sum(s <= total / 2 for s in steps) > n / 2 + 2  # well over half of them in the first half


@pytest.mark.parametrize("n", [-1, 1])
def test_a_bad_count_is_one_clear_error(n):
    with pytest.raises(ScratchError, match=r"--snapshots must be 0 \(none\) or at least 2"):
        S.snapshot_steps(100, n)


# ---- GPT --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_gpt_snapshot_is_the_checkpoint_of_the_run_stopped_there(tmp_path, arch):
    T.train(gpt_config(tmp_path / "full", arch=arch), echo=quiet)
    kept = S.list_snapshots(tmp_path / "full" / "run")
    assert list(kept) == [0, 1, 2, 3, 4, 5, 6]
    start = T.Trainer(gpt_config(tmp_path / "start", arch=arch))  # step 0: the weights before any step
    assert_same_tensors(S.read_snapshot(tmp_path / "full" / "run", 0), start.model.state_dict())
    for k in (2, 5, 6):  # the same run (same schedule length), stopped at step k
        T.train(gpt_config(tmp_path / f"to{k}", max_iters=k, snapshots=0, arch=arch), echo=quiet)
        ckpt = read_safetensors(tmp_path / f"to{k}" / "run" / "ckpt" / "model.safetensors")
        assert_same_tensors(S.read_snapshot(tmp_path / "full" / "run", k), ckpt)
    model = S.load_snapshot(tmp_path / "full" / "run", 2)  # the checkpoint's model with snapshot 2's weights
    assert model.kind == arch
    assert_same_tensors(model.state_dict(), S.read_snapshot(tmp_path / "full" / "run", 2))


def test_resume_keeps_the_snapshots_and_adds_the_rest(tmp_path):
    T.train(gpt_config(tmp_path / "full"), echo=quiet)
    run = tmp_path / "b" / "run"
    T.train(gpt_config(tmp_path / "b", max_iters=3), echo=quiet)
    assert list(S.list_snapshots(run)) == [0, 1, 2, 3]
    before = {k: p.read_bytes() for k, p in S.list_snapshots(run).items()}
    S.write_snapshot(run, 5, T.Trainer(gpt_config(tmp_path / "other")).model)  # as if left by steps a crash lost
    said = []
    T.train(gpt_config(tmp_path / "b", max_iters=6), resume=True, echo=said.append)
    kept = S.list_snapshots(run)
    assert list(kept) == [0, 1, 2, 3, 4, 5, 6]
    assert all(kept[k].read_bytes() == before[k] for k in before)  # the earlier ones untouched
    for k in kept:  # and every one as in the run never stopped (5 written again by the resumed run)
        assert_same_tensors(S.read_snapshot(run, k), S.read_snapshot(tmp_path / "full" / "run", k))
    count, size = S.snapshots_size(run)
    assert said[-1] == f"snapshots: 7 steps' weights in {run / 'snapshots'}, {size / 1e6:.1f} MB"


def test_a_fresh_run_drops_the_old_snapshots(tmp_path):
    T.train(gpt_config(tmp_path, max_iters=4, lr_decay_iters=4), echo=quiet)
    T.train(gpt_config(tmp_path, max_iters=2, lr_decay_iters=2, snapshots=2), echo=quiet)
    assert list(S.list_snapshots(tmp_path / "run")) == [0, 2]
    T.train(gpt_config(tmp_path, max_iters=2, lr_decay_iters=2, snapshots=0), echo=quiet)
    assert S.list_snapshots(tmp_path / "run") == {}


def test_an_interrupted_run_keeps_the_step_it_stopped_at(tmp_path):
    trainer = T.Trainer(gpt_config(tmp_path, max_iters=40, lr_decay_iters=40, snapshots=4))
    real = trainer.train_step

    def step_then_interrupt():
        loss = real()
        if trainer.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    trainer.train_step = step_then_interrupt
    trainer.fit(echo=quiet)
    # planned: 0 and 3 steps in 1..40 at 40^(0, 1/2, 1) = 1, 6.3, 40; kept: those reached, and 5
    assert S.snapshot_steps(40, 4) == [0, 1, 6, 40]
    assert list(S.list_snapshots(tmp_path / "run")) == [0, 1, 5]


def test_the_cli_flag(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TEXT)
    common = ["train", "--data", str(tmp_path / "corpus.txt"), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
              "--block-size", "8", "--batch-size", "4", "--max-iters", "30", "--eval-iters", "1",
              "--sample-tokens", "0", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    assert list(S.list_snapshots(tmp_path / "default")) == S.snapshot_steps(30, 20)  # 20 by default
    assert f"snapshots: 20 steps' weights in {tmp_path / 'default' / 'snapshots'}" in out
    assert main(common + ["--out", str(tmp_path / "none"), "--snapshots", "0"]) == 0
    assert "snapshots:" not in capsys.readouterr().out
    assert not (tmp_path / "none" / "snapshots").exists()


# ---- Transformer -----------------------------------------------------------------------------
def translation_config(d, **kw):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["ka", "mo", "ri", "su", "te", "lo"]
    src = [" ".join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(120)]
    (d / "src.txt").write_text("\n".join(src) + "\n")
    (d / "tgt.txt").write_text("\n".join(s.upper() for s in src) + "\n")
    base = dict(data="", src=str(d / "src.txt"), tgt=str(d / "tgt.txt"), out=str(d / "run"), vocab_size=280,
                d_model=16, n_head=2, n_layers=1, d_ff=32, dropout=0.1, epochs=2, max_tokens=64, warmup_steps=5,
                bleu_sentences=0, progress=False, snapshots=6)
    return TT.TranslationConfig(**(base | kw))


def test_a_transformer_snapshot_is_the_checkpoint_of_the_run_stopped_there(tmp_path):
    full = TT.train_translation(translation_config(tmp_path / "full"), echo=quiet)
    kept = S.list_snapshots(tmp_path / "full" / "run")
    assert len(kept) == 6 and list(kept)[0] == 0 and list(kept)[-1] == full.step
    k = list(kept)[3]
    assert 0 < k < full.step
    TT.train_translation(translation_config(tmp_path / "part", max_steps=k, snapshots=0), echo=quiet)
    ckpt = read_safetensors(tmp_path / "part" / "run" / "ckpt" / "model.safetensors")
    assert_same_tensors(S.read_snapshot(tmp_path / "full" / "run", k), ckpt)


# ---- MPI ----------------------------------------------------------------------------------------
def test_under_mpi_rank_0_writes_the_snapshots_of_the_threads_run(tmp_path):
    pytest.importorskip("mpi4py")
    mpirun = next((str(p) for p in [Path(sys.executable).parent / "mpirun"] if p.exists()), shutil.which("mpirun"))
    if mpirun is None:
        pytest.skip("needs mpirun: pip install -e '.[mpi]'")
    (tmp_path / "corpus.txt").write_text(TEXT)
    args = ["train", "--data", "corpus.txt", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size",
            "8", "--batch-size", "6", "--max-iters", "5", "--eval-iters", "1", "--sample-tokens", "0",
            "--no-progress", "--snapshots", "4"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "HYDRA_", "MPI_"))}
    proc = subprocess.run([mpirun, "-n", "2", sys.executable, "-m", "scratchllm", *args, "--out", "ranks"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("snapshots: 4 steps' weights in ranks/snapshots") == 1  # said once, by rank 0
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(args + ["--threads", "2", "--out", "threads"]) == 0
    finally:
        os.chdir(here)
    ranks, threads = S.list_snapshots(tmp_path / "ranks"), S.list_snapshots(tmp_path / "threads")
    assert list(ranks) == list(threads) == [0, 1, 2, 5]
    assert not [p for p in (tmp_path / "ranks" / "snapshots").iterdir() if p.name.startswith(".")]  # no leftovers
    for k in ranks:
        assert_same_tensors(S.read_snapshot(tmp_path / "ranks", k), S.read_snapshot(tmp_path / "threads", k))
