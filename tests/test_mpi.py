"""Data parallelism over MPI (distributed.py): ranks started by ``mpirun`` train
the same weights as one process with as many threads, bit for bit; a run
resumes across layouts, taking only the steps left; a rank that fails, dies or disagrees stops them all.

The ``mpirun`` tests start the pip-installed MPICH on localhost (each run a
few seconds) and skip when mpi4py or mpirun is missing."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from scratchllm import distributed as D
from scratchllm.cli import main
from scratchllm.errors import ScratchError

try:
    import mpi4py
except ImportError:
    mpi4py = None
# The mpirun installed beside this Python (the mpich package's) before any other on the PATH.
MPIRUN = next((str(p) for p in [Path(sys.executable).parent / "mpirun"] if p.exists()), shutil.which("mpirun"))
needs_mpi = pytest.mark.skipif(mpi4py is None or MPIRUN is None,
                               reason="needs mpi4py and its mpirun: pip install -e '.[mpi]'")

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40
# A small GPT with dropout and two micro-batches per step: every source of randomness and scaling is in play.
GPT = ["--data", "corpus.txt", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8",
       "--batch-size", "6", "--grad-accum", "2", "--dropout", "0.1", "--eval-interval", "3", "--eval-iters", "2",
       "--warmup-iters", "2", "--sample-tokens", "0", "--no-progress"]


def _clean_env():
    """This process's environment without a launcher's variables (pytest may itself run under one)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_", "HYDRA_", "MPI_"))}


def ranks(*args, n=1, wdir=None):
    """``n`` ranks running ``python ARGS`` (in ``wdir``): one part of an mpirun command line."""
    return ["-n", str(n)] + (["-wdir", str(wdir)] if wdir else []) + [sys.executable, *args]


def mpirun(cwd, *parts, timeout=60):
    """``mpirun PART : PART ...``; returns (CompletedProcess, seconds)."""
    argv = [MPIRUN] + [word for i, part in enumerate(parts) for word in [":"] * (i > 0) + part]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
    return proc, time.monotonic() - t0


def cli(cwd, *args):
    """``scratchllm ARGS`` in this process, in ``cwd``."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return main(list(args))
    finally:
        os.chdir(before)


def state(run):
    """Weights and optimizer moments of a run's checkpoint, and its step."""
    ckpt = run / "ckpt"
    arrays = load_file(ckpt / "model.safetensors") | {f"opt.{k}": v for k, v in
                                                     load_file(ckpt / "optimizer.safetensors").items()}
    return arrays, json.loads((ckpt / "train_state.json").read_text())["step"]


def assert_bit_identical(a, b):
    (wa, sa), (wb, sb) = state(a), state(b)
    assert sa == sb and wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    return tmp_path


# ---- without MPI -------------------------------------------------------------------------
def test_launch_is_read_from_the_launchers_variables():
    assert D.launched({}) == (0, 1)
    assert D.launched({"PMI_RANK": "1", "PMI_SIZE": "4"}) == (1, 4)  # MPICH, Intel MPI
    assert D.launched({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3"}) == (2, 3)  # Open MPI


def test_mpi_launch_without_mpi4py_says_how_to_install(corpus, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    monkeypatch.setattr(D, "_world", None)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ScratchError, match=r'mpi4py is not installed: pip install "scratchllm\[mpi\]"'):
        D.world()
    assert cli(corpus, "train", *GPT, "--out", "run") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install" in err and not (corpus / "run" / "ckpt").exists()


def test_one_process_is_a_world_of_one():
    w = D.World()
    assert (w.rank, w.size, w.is_root, w.any(False), w.any(True)) == (0, 1, True, False, True)
    parts = [np.array([1.0, 2.0], np.float32), np.array([0.5, 0.25], np.float32)]
    np.testing.assert_array_equal(w.ordered_sum(np.array([1, 1], np.float32), parts), [2.5, 3.25])


# ---- through mpirun -----------------------------------------------------------------------
# The CLI with the chain's messages cut small, so that these tiny models' gradients travel in many pieces.
SMALL_CHUNKS = ["-c", "import sys; import scratchllm.distributed as D; D.CHUNK = 500; from scratchllm.cli import main; "
                "sys.exit(main(sys.argv[1:]))"]


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])  # 3: a rank in the middle of the chain receives, adds and passes on
def test_gpt_n_ranks_equal_n_threads_bit_for_bit(corpus, n):
    proc, _ = mpirun(corpus, ranks(*SMALL_CHUNKS, "train", *GPT, "--max-iters", "4", "--out", "ranks", n=n))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("step 3: train loss") == 1  # rank 0 alone logs
    assert cli(corpus, "train", *GPT, "--max-iters", "4", "--threads", str(n), "--out", "threads") == 0
    assert_bit_identical(corpus / "ranks", corpus / "threads")
    logs = [(corpus / r / "log.jsonl").read_text().splitlines() for r in ("ranks", "threads")]
    assert [json.loads(x)["val_loss"] for x in logs[0]] == [json.loads(x)["val_loss"] for x in logs[1]]


@needs_mpi
def test_gpt_two_ranks_equal_one_thread_up_to_rounding(corpus):
    """The first step's gradient (Adam's first moment holds 0.1 × it) from 2 ranks and from one
    thread over the whole batch: equal up to float32 rounding, which the shards' sums change."""
    args = [*GPT, "--max-iters", "1", "--dropout", "0", "--grad-clip", "0"]
    proc, _ = mpirun(corpus, ranks("-m", "scratchllm", "train", *args, "--out", "ranks", n=2))
    assert proc.returncode == 0, proc.stderr
    assert cli(corpus, "train", *args, "--threads", "1", "--out", "one") == 0
    (a, _), (b, _) = state(corpus / "ranks"), state(corpus / "one")
    moments = [k for k in a if k.endswith("exp_avg")]
    assert moments
    for k in moments:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6 * np.abs(b[k]).max(), err_msg=k)


@needs_mpi
def test_transformer_two_ranks_equal_two_threads_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    words = {"ka": "dog", "mo": "cat", "ri": "runs", "su": "sleeps", "te": "big", "pa": "red"}
    src = [list(rng.choice(list(words), size=rng.integers(2, 7))) for _ in range(60)]
    (tmp_path / "s.txt").write_text("".join(" ".join(s) + "\n" for s in src))
    (tmp_path / "t.txt").write_text("".join(" ".join(words[w] for w in s) + "\n" for s in src))
    args = ["translate-train", "--src", "s.txt", "--tgt", "t.txt", "--vocab-size", "280", "--d-model", "16",
            "--n-head", "2", "--n-layers", "1", "--d-ff", "32", "--max-tokens", "120", "--max-steps", "4",
            "--bleu-sentences", "2", "--no-progress"]  # dropout 0.1 (the default)
    proc, _ = mpirun(tmp_path, ranks(*SMALL_CHUNKS, *args, "--out", "ranks", n=2))
    assert proc.returncode == 0, proc.stderr
    assert cli(tmp_path, *args, "--threads", "2", "--out", "threads") == 0
    assert_bit_identical(tmp_path / "ranks", tmp_path / "threads")


# The CLI, each optimizer step saying (on rank 0) which step it is and the learning rate it takes.
COUNTER = """
import sys
from scratchllm import train as T
from scratchllm.cli import main

step = T.Trainer.train_step

def counted(self):
    if self.world.rank == 0:
        print(f"ran step {self.step} at lr {self.lr_at(self.step)!r}", flush=True)
    return step(self)

T.Trainer.train_step = counted
sys.exit(main(sys.argv[1:]))
"""


def steps_run(stdout):
    """[(step, lr)] of the steps a COUNTER run took."""
    return [(int(m[1]), float(m[2])) for m in re.finditer(r"^ran step (\d+) at lr (\S+)$", stdout, re.M)]


def counted(cwd, *args):
    """One process (no mpirun) running COUNTER; the steps it took."""
    proc = subprocess.run([sys.executable, "counter.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    return steps_run(proc.stdout)


@needs_mpi
@pytest.mark.parametrize("first", ["ranks", "threads"])
def test_resume_across_layouts_continues_where_it_stopped(corpus, first):
    """Stopped after 3 steps at one layout (2 ranks, or 1 process × 2 threads), resumed to 6
    at the other: the log records the resume at step 3, the resumed run takes steps 3, 4, 5
    only, at the full run's learning rates, and ends bit for bit where 6 steps never stopped end.
    With warmup then cosine decay, steps 3-5 take other learning rates than steps 0-2, so a resume
    that restarted the schedule would end elsewhere (and one that restarted the run would take 6 steps)."""
    (corpus / "counter.py").write_text(COUNTER)
    full = counted(corpus, "train", *GPT, "--max-iters", "6", "--threads", "2", "--out", "full")
    assert [s for s, _ in full] == list(range(6))
    assert all(a != b for (_, a), (_, b) in zip(full[:3], full[3:]))  # steps 3-5 at other lrs than 0-2
    half = ["train", *GPT, "--out", "run", "--lr-decay-iters", "6"]  # the full run's schedule, stopped at 3
    if first == "ranks":
        proc, _ = mpirun(corpus, ranks("counter.py", *half, "--max-iters", "3", n=2))
        assert proc.returncode == 0, proc.stderr
        before = steps_run(proc.stdout)
        after = counted(corpus, *half, "--max-iters", "6", "--resume")  # 2 threads, from the checkpoint
    else:
        before = counted(corpus, *half, "--max-iters", "3", "--threads", "2")
        proc, _ = mpirun(corpus, ranks("counter.py", *half, "--max-iters", "6", "--resume", n=2))
        assert proc.returncode == 0, proc.stderr
        after = steps_run(proc.stdout)
    assert before == full[:3] and after == full[3:]  # only the remaining steps, each at its own lr
    assert_bit_identical(corpus / "run", corpus / "full")
    log, full_log = ([json.loads(x) for x in (corpus / r / "log.jsonl").read_text().splitlines()]
                     for r in ("run", "full"))
    assert [(r["step"], r.get("resumed", False)) for r in log] == [(0, False), (3, True), (6, False)]
    assert [(r["step"], r["lr"], r["val_loss"]) for r in log] == [(r["step"], r["lr"], r["val_loss"]) for r in full_log]


KILLER = """
import os, signal, sys
from scratchllm import train as T
from scratchllm.cli import main

step = T.Trainer.train_step

def failing_step(self):
    if self.world.rank == 1 and self.step == 4:
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("boom")
    return step(self)

T.Trainer.train_step = failing_step
sys.exit(main(sys.argv[2:]))
"""


@needs_mpi
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failing_rank_stops_every_rank_within_seconds(corpus, how):
    (corpus / "killer.py").write_text(KILLER)
    argv = ["killer.py", how, "train", *GPT, "--max-iters", "100000", "--out", "run"]
    proc, seconds = mpirun(corpus, ranks(*argv, n=2), timeout=60)
    assert proc.returncode != 0 and seconds < 20, (proc.returncode, seconds)
    if how == "raise":
        assert "scratchllm train: error on rank 1: RuntimeError: boom" in proc.stderr
    _, step = state(corpus / "run")  # the last checkpoint, before the failure, is whole
    assert step == 3 and not list(corpus.glob("run/ckpt.*"))


@needs_mpi
def test_ranks_with_different_settings_refuse_to_start(corpus):
    proc, seconds = mpirun(corpus, ranks("-m", "scratchllm", "train", *GPT, "--out", "run", "--lr", "0.001"),
                           ranks("-m", "scratchllm", "train", *GPT, "--out", "run", "--lr", "0.002"))
    assert proc.returncode == 2 and seconds < 20
    assert proc.stderr.strip() == ("scratchllm train: error: rank 1 has other settings than rank 0 "
                                   "(lr: 0.002 vs 0.001); every rank must be started alike")
    assert not (corpus / "run" / "ckpt").exists()


@needs_mpi
def test_ranks_with_different_data_refuse_to_start(tmp_path):
    """The same command in two folders whose corpus.txt differ."""
    for name, text in (("a", TEXT), ("b", TEXT.replace("cat", "cow"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "corpus.txt").write_text(text)
    argv = ["-m", "scratchllm", "train", *GPT, "--out", "run"]
    proc, _ = mpirun(tmp_path, ranks(*argv, wdir=tmp_path / "a"), ranks(*argv, wdir=tmp_path / "b"))
    assert proc.returncode == 2
    assert "rank 1 has other data or weights than rank 0 (train:" in proc.stderr
    assert proc.stderr.count("error") == 1


@needs_mpi
def test_nan_on_the_ranks_stops_all_with_one_message(corpus):
    proc, seconds = mpirun(corpus, ranks("-W", "ignore", "-m", "scratchllm", "train", *GPT, "--lr", "1e6",
                                         "--max-iters", "100000", "--out", "run", n=2))
    assert proc.returncode == 2 and seconds < 20
    assert proc.stderr.count("loss became nan") == 1 and "Traceback" not in proc.stderr
