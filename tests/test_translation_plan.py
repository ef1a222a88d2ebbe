"""How a translation run ends: a schedule planned to the --minutes budget, the last epochs'
weights averaged, decoding chosen on validation, and the signature of the BLEU it reports."""
import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

import scratchllm as sl
from scratchllm import translation_train as TT
from scratchllm.cli import main
from test_translation_train import quiet, tiny_config

try:
    import sacrebleu
except ImportError:  # a test extra
    sacrebleu = None


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


class StepClock:
    """A clock the test drives: ``per_step`` seconds pass in each training step, none elsewhere."""

    def __init__(self, per_step):
        self.now, self.per_step = 1000.0, per_step

    def __call__(self):
        return self.now

    def drive(self, trainer):
        advance = trainer.advance

        def timed():
            out = advance()
            self.now += self.per_step
            return out
        trainer.advance = timed


def test_time_budget_schedule_reaches_its_final_rate_at_the_budget(tmp_path):
    """--minutes 1 with steps of 1.5 s on the test's clock: 40 steps, the rate each step took is the warmup times
    a straight line from 1 to 0 over the 60 s (worked out here from the clock), and 0 at the budget."""
    cfg = tiny_config(tmp_path, epochs=0, minutes=1, bleu_sentences=0, log_interval=1, warmup_steps=4, lr=1e-2,
                      average=1, snapshots=0)
    clock, said = StepClock(1.5), []
    tr = TT.TranslationTrainer(cfg, echo=said.append, clock=clock)
    clock.drive(tr)
    tr.fit()
    assert tr.step == 40 and tr.stopped == "stopped at the end of --minutes 1"
    plan = [line for line in said if line.startswith("plan:")]  # said after 20 steps: 30 s spent, 30 s left
    assert len(plan) == 1 and "1.50 s a step on this machine; --minutes 1: about 40 steps" in plan[0], said
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path / "run") if r["kind"] == "train"}
    assert sorted(lrs) == list(range(1, 41))
    for step, lr in lrs.items():  # step k ran at clock time 1.5·(k − 1) into the run
        assert lr == pytest.approx(1e-2 * min(1, step / 4) * (1 - 1.5 * (step - 1) / 60), abs=1e-12), step
    assert lrs[40] == pytest.approx(1e-2 / 40)
    from scratchllm.explore.api import Explorer  # the page draws what the run took, step by step

    drawn = Explorer(tmp_path / "run").run({})["schedule"]
    assert drawn["steps"] == list(range(40)) and drawn["lr"] == [lrs[k + 1] for k in range(40)]
    assert tr.lr_at(tr.step) == 0.0  # the budget is spent: the schedule has ended
    assert tr.run_seconds() == 60.0 and json.loads((tmp_path / "run" / "ckpt" / "train_state.json").read_text()
                                                   )["run_seconds"] == 60.0


def test_plan_leaves_out_the_start_and_is_redone_after_the_first_epoch(tmp_path):
    """Five slow first steps (11.5 s: start-up work), then 1.5 s a step, and 9 s of evaluation after each
    22-step epoch, on the test's clock, --minutes 3. The plan after 20 steps times steps 6–20 alone; the
    one after epoch 1 includes the evaluation, and comes closer to the steps the run takes."""
    cfg = tiny_config(tmp_path, epochs=0, minutes=3, bleu_sentences=0, log_interval=1, average=1, snapshots=0)
    clock, said = StepClock(1.5), []
    tr = TT.TranslationTrainer(cfg, echo=said.append, clock=clock)
    advance, evaluate = tr.advance, tr.evaluate

    def advance_slow_at_first():
        out = advance()
        clock.now += 11.5 if tr.step <= 5 else 1.5
        return out

    def evaluate_slowly():
        clock.now += 9.0
        return evaluate()
    tr.advance, tr.evaluate = advance_slow_at_first, evaluate_slowly
    tr.fit()
    # the run worked out here: step k ends at t(k); an evaluation after steps 22, 44, 66; stop once t ≥ 180
    t, ends = 0.0, {}
    for k in range(1, 1000):
        t += 11.5 if k <= 5 else 1.5
        t += 9.0 if k % 22 == 0 else 0.0
        ends[k] = t
        if t >= 180:
            break
    steps = k
    assert tr.step == steps == 69
    first = 20 + int((180 - ends[20]) / 1.5)  # 86: the pace of steps 6–20, no evaluation in it
    again = 22 + int((180 - ends[22]) / ((ends[22] - ends[5]) / 17))  # 65: steps 6–22 and the first evaluation
    plan = [line for line in said if line.startswith("plan")]
    assert len(plan) == 2, said
    assert plan[0].startswith("plan: 1.50 s a step on this machine; --minutes 3: about 86 steps"), plan[0]
    assert plan[1].startswith(f"plan after epoch 1: {(ends[22] - ends[5]) / 17:.2f} s a step with the evaluations; "
                              f"--minutes 3: about {again} steps"), plan[1]
    assert abs(again - steps) < abs(first - steps)


def test_time_budget_is_kept_across_a_resume(tmp_path):
    """Stopped after 20 of the budget's 40 steps, then resumed: the clock goes on from 30 s, not from 0."""
    cfg = tiny_config(tmp_path, epochs=0, minutes=1, bleu_sentences=0, log_interval=1, warmup_steps=4,
                      average=1, snapshots=0, max_steps=20)
    clock = StepClock(1.5)
    tr = TT.TranslationTrainer(cfg, echo=quiet, clock=clock)
    clock.drive(tr)
    tr.fit()
    assert tr.step == 20
    cfg.max_steps = 0
    tr = TT.TranslationTrainer(cfg, resume=True, echo=quiet, clock=clock)
    clock.drive(tr)
    tr.fit()
    assert tr.step == 40 and tr.run_seconds() == 60.0


def test_epoch_schedule_ends_at_zero_on_the_last_step(tmp_path):
    tr = TT.train_translation(tiny_config(tmp_path, epochs=2, log_interval=1, bleu_sentences=0, average=1,
                                          snapshots=0), echo=quiet)
    lrs = [r["lr"] for r in read_log(tmp_path / "run") if r["kind"] == "train"]
    total = tr.step
    assert len(lrs) == total and tr.total_steps() == total
    assert lrs[-1] == pytest.approx(1e-2 * (1 - (total - 1) / total)) and tr.lr_at(total) == 0.0


def test_averaged_weights_are_the_mean_of_the_last_epochs(tmp_path):
    """Without validation BLEU to check it by, model/ holds the average: the mean, computed here, of the
    weights the last three epochs ended with."""
    tr = TT.train_translation(tiny_config(tmp_path, epochs=4, bleu_sentences=0, average=3), echo=quiet)
    run = tmp_path / "run"
    files = sorted((run / "epochs").glob("step-*.safetensors"))
    assert len(files) == 3  # the older epochs' weights were let go
    kept = [load_file(f) for f in files]
    mean = {k: sum(w[k].astype(np.float64) for w in kept) / 3 for k in kept[0]}
    written = load_file(run / "model" / "model.safetensors")
    assert written.keys() == mean.keys()
    for k in mean:
        np.testing.assert_allclose(written[k], mean[k], rtol=1e-6, atol=1e-7, err_msg=k)
    last = load_file(run / "ckpt" / "model.safetensors")  # the checkpoint keeps the last weights, to resume
    assert all(np.array_equal(last[k], kept[-1][k]) for k in last)
    config = json.loads((run / "model" / "config.json").read_text())
    steps = [int(re.search(r"(\d+)", f.name).group(1)) for f in files]
    assert config["chosen"]["weights"] == "average" and config["chosen"]["steps_averaged"] == steps
    assert read_log(run)[-1]["average_of"] == steps
    assert steps[-1] == tr.step


def test_the_better_on_validation_is_kept_and_translate_uses_its_decoding(tmp_path, capsys):
    """With validation BLEU, model/ holds whichever of the last weights and the average scored higher,
    and translate-eval decodes with the beam and length penalty that scored best."""
    TT.train_translation(tiny_config(tmp_path, epochs=3, average=2), echo=quiet)
    run = tmp_path / "run"
    final = read_log(run)[-1]
    assert final["kind"] == "final" and {"val_bleu_last", "val_bleu_average"} <= final.keys()
    better = "average" if final["val_bleu_average"] >= final["val_bleu_last"] else "last"
    assert final["weights"] == better
    written = load_file(run / "model" / "model.safetensors")
    last = load_file(run / "ckpt" / "model.safetensors")
    same = all(np.array_equal(written[k], last[k]) for k in last)
    assert same == (better == "last")
    scores = final["decoding_val_bleu"]
    beam, alpha = final["decoding"]["beam"], final["decoding"]["length_penalty"]
    assert scores[f"beam {beam}, alpha {alpha:g}"] == max(scores.values())
    src, ref = run.parent / "data" / "src.txt", run.parent / "data" / "tgt.txt"
    assert main(["translate-eval", "--ckpt", str(run), "--src", str(src), "--ref", str(ref), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"beam {beam}, length penalty {alpha:g} (chosen on validation" in out


@pytest.mark.skipif(sacrebleu is None, reason="sacrebleu (test extra) is not installed")
def test_signature_is_sacrebleus(tmp_path, capsys):
    TT.train_translation(tiny_config(tmp_path, epochs=1, bleu_sentences=0, average=1), echo=quiet)
    run, data = tmp_path / "run", tmp_path / "data"
    assert main(["translate-eval", "--ckpt", str(run), "--src", str(data / "src.txt"), "--ref", str(data / "tgt.txt"),
                 "--no-progress", "--beam", "1"]) == 0
    out = capsys.readouterr().out
    metric = sacrebleu.BLEU()
    metric.corpus_score(["a b"], [["a b"]])
    expected = str(metric.get_signature())
    fields = expected.rsplit("|version:", 1)[0]  # sacrebleu's own fields; the version is the one bleu() was checked on
    assert f"signature: {fields}|version:{sl.metrics.SACREBLEU_VERSION}" in out and "tok:13a" in expected


@pytest.mark.parametrize("bad, message", [
    ({"schedule": "cosine"}, "--schedule must be one of linear, inverse-sqrt"),
    ({"average": 0}, "--average must be at least 1"),
    ({"epochs": -1}, "--epochs must be at least 0"),
])
def test_bad_plan_settings_are_clear(tmp_path, bad, message):
    with pytest.raises(sl.ScratchError, match=re.escape(message)):
        TT.check_config(tiny_config(tmp_path, **bad))
