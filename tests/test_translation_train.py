"""The translation trainer: it learns, resumes bit for bit, stops cleanly, and reads real data."""
import json
import os
import signal

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import translation_train as TT
from scratchllm.translate import translate_texts

try:
    import sacrebleu
except ImportError:  # a test extra: the tests that do not score with it still run
    sacrebleu = None
needs_sacrebleu = pytest.mark.skipif(sacrebleu is None, reason="sacrebleu (test extra) is not installed")

# A made-up language translated word by word into English.
LEXICON = {"ka": "dog", "mo": "cat", "ri": "runs", "su": "sleeps", "te": "big", "lo": "small",
           "pa": "red", "ne": "the", "vi": "house", "zu": "tree", "bo": "eats", "gi": "fish"}


def synthetic_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    words = list(LEXICON)
    src = [list(rng.choice(words, size=rng.integers(3, 7))) for _ in range(n)]
    return [" ".join(s) for s in src], [" ".join(LEXICON[w] for w in s) for s in src]


def write_corpus(d, n=600, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    src, tgt = synthetic_pairs(n, seed)
    (d / "src.txt").write_text("\n".join(src) + "\n")
    (d / "tgt.txt").write_text("\n".join(tgt) + "\n")
    return d / "src.txt", d / "tgt.txt"


def tiny_config(d, **kw):
    src, tgt = write_corpus(d / "data")
    base = dict(data="", src=str(src), tgt=str(tgt), out=str(d / "run"), vocab_size=300, d_model=32, n_head=2,
                n_layers=1, d_ff=64, dropout=0.0, epochs=25, max_tokens=256, lr=1e-2, warmup_steps=30,
                bleu_sentences=30, progress=False, log_interval=10)
    base.update(kw)
    return TT.TranslationConfig(**base)


def quiet(*a):
    pass


def state(trainer):
    return ({k: v.copy() for k, v in trainer.model.state_dict().items()},
            {k: v.copy() for k, v in trainer.opt.state_dict()["state"].items()})


def assert_same(a, b):
    for part_a, part_b in zip(state(a), state(b)):
        assert part_a.keys() == part_b.keys()
        for k in part_a:
            np.testing.assert_array_equal(part_a[k], part_b[k], err_msg=k)


@pytest.mark.slow  # ~30 s; the default run's translation CLI tests train and score the same language
@needs_sacrebleu
def test_learns_a_word_by_word_language(tmp_path):
    tr = TT.train_translation(tiny_config(tmp_path), echo=quiet)
    assert tr.step > 400
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert len(epochs) == 25 and epochs[-1]["val_loss"] < 0.3 < epochs[0]["val_loss"]
    # unseen sentences, scored by sacrebleu
    src, ref = synthetic_pairs(100, seed=1)
    hyps = translate_texts(tr.model, tr.tokenizer, src, beam_size=4)
    assert sacrebleu.corpus_bleu(hyps, [ref]).score > 90


def test_inverse_sqrt_schedule():
    lr, w = 1e-3, 100
    assert TT.inverse_sqrt_lr(0, lr, w) == pytest.approx(lr / 100)        # step 1 of the warmup
    assert TT.inverse_sqrt_lr(49, lr, w) == pytest.approx(lr / 2)         # half way up
    assert TT.inverse_sqrt_lr(99, lr, w) == pytest.approx(lr)             # the peak
    assert TT.inverse_sqrt_lr(399, lr, w) == pytest.approx(lr / 2)        # 4 × warmup: 1/√4


def test_pairs_are_framed_and_padded(tmp_path):
    tok = TT.train_tokenizer(["a b", "a"], ["x y", "x"], 259)
    pad, bos, eos = (tok.special_tokens[s] for s in ("<pad>", "<bos>", "<eos>"))
    data = TT.PairData(tok, ["a b", "a"], ["x y", "x"], limit=64)
    src, tgt_in, tgt_out = data.batch([0, 1])
    assert src.tolist() == [tok.encode("a b"), tok.encode("a") + [pad] * (len(tok.encode("a b")) - 1)]
    xy, x = tok.encode("x y"), tok.encode("x")
    assert tgt_in.tolist() == [[bos] + xy, [bos] + x + [eos] + [pad] * (len(xy) - len(x) - 1)]
    assert tgt_out.tolist() == [xy + [eos], x + [eos] + [pad] * (len(xy) - len(x))]


def test_long_pairs_are_dropped(tmp_path):
    tok = TT.train_tokenizer(["a", "b"], ["c", "d"], 259)
    data = TT.PairData(tok, ["a", "a " * 20], ["c", "c"], limit=8)
    assert len(data) == 1 and data.dropped == 1


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_mid_epoch_is_bit_identical(tmp_path, dropout):
    kw = dict(dropout=dropout, epochs=2, bleu_sentences=5)
    full = TT.train_translation(tiny_config(tmp_path / "a", **kw), echo=quiet)
    first = TT.train_translation(tiny_config(tmp_path / "b", max_steps=30, **kw), echo=quiet)
    assert first.step == 30 and first.epoch == 1 and 0 < first.batch  # stopped inside the second epoch
    resumed = TT.train_translation(tiny_config(tmp_path / "b", **kw), resume=True, echo=quiet)
    assert resumed.step == full.step and resumed.epoch == 2
    assert_same(full, resumed)
    logs = [[json.loads(x) for x in (tmp_path / r / "run" / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert [r for r in logs[0] if r["kind"] == "epoch"][-1]["train_loss"] == \
        [r for r in logs[1] if r["kind"] == "epoch"][-1]["train_loss"]


def test_interrupt_saves_and_resumes_exactly(tmp_path):
    full = TT.train_translation(tiny_config(tmp_path / "a", epochs=2, dropout=0.1), echo=quiet)
    tr = TT.TranslationTrainer(tiny_config(tmp_path / "b", epochs=2, dropout=0.1), echo=quiet)
    real_step = tr.train_step

    def step_then_interrupt(rows):
        out = real_step(rows)
        if tr.step == 7:  # as if Ctrl-C were pressed during step 7
            os.kill(os.getpid(), signal.SIGINT)
        return out

    tr.train_step = step_then_interrupt
    said = []
    tr.echo = said.append
    tr.fit()
    assert tr.step == 7 and said[-1].startswith("interrupted at epoch 1, batch 7")
    resumed = TT.train_translation(tiny_config(tmp_path / "b", epochs=2, dropout=0.1), resume=True, echo=quiet)
    assert_same(full, resumed)


def test_nan_loss_stops_with_clear_error(tmp_path):
    tr = TT.TranslationTrainer(tiny_config(tmp_path, epochs=3), echo=quiet)
    n = len(tr.epoch_batches(0))
    real_step = tr.train_step

    def poisoned_step(rows):
        if tr.step == n + 2:  # a weight turns NaN, as after a diverging update
            tr.model.decoder.norm.weight.data[0] = np.nan
        return real_step(rows)

    tr.train_step = poisoned_step
    with pytest.raises(sl.ScratchError, match=rf"loss became nan at step {n + 2}.*last good checkpoint \(step {n}\)"):
        tr.fit()
    saved = sl.load(tmp_path / "run")
    assert all(np.isfinite(p.data).all() for p in saved.parameters())


def test_log_and_checkpoint(tmp_path):
    tr = TT.train_translation(tiny_config(tmp_path, epochs=2), echo=quiet)
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log][-1] == "final" and {r["kind"] for r in log} == {"train", "epoch", "final"}
    assert all(0 <= r["val_bleu"] <= 100 for r in log if r["kind"] == "epoch")
    model, tok = sl.load(run / "ckpt"), sl.checkpoint.load_tokenizer(run)  # the last weights, to resume from
    assert translate_texts(model, tok, ["ka ri"]) == translate_texts(tr.model, tr.tokenizer, ["ka ri"])
    assert sl.checkpoint.locate(run) == run / "model"  # what translate reads: the weights the run chose
    saved = json.loads((run / "ckpt" / "train_state.json").read_text())
    assert (saved["epoch"], saved["batch"], saved["step"]) == (2, 0, tr.step)


@pytest.mark.parametrize("files, message", [
    ({"src": "a\nb\n", "tgt": "x\n"}, "has 2 lines but"),
    ({"src": "a\n\nc\n", "tgt": "x\ny\nz\n"}, "line 2 of"),
])
def test_bad_parallel_files_are_clear(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cfg = tiny_config(tmp_path, src=str(tmp_path / "src"), tgt=str(tmp_path / "tgt"))
    with pytest.raises(sl.ScratchError, match=message):
        TT.TranslationTrainer(cfg)


@pytest.mark.slow  # ~80 s on 2 busy cores
def test_multi30k_slice_learns(tmp_path, shared_data):
    """A few steps on 1000 real pairs: the loss falls and the output is English-looking text."""
    de, en = sl.data.multi30k("train", shared_data)
    (tmp_path / "de").write_text("\n".join(de[:1000]) + "\n")
    (tmp_path / "en").write_text("\n".join(en[:1000]) + "\n")
    cfg = TT.TranslationConfig(data="", src=str(tmp_path / "de"), tgt=str(tmp_path / "en"), out=str(tmp_path / "run"),
                               vocab_size=600, d_model=64, n_head=2, n_layers=1, d_ff=128, epochs=3,
                               max_tokens=1024, lr=3e-3, warmup_steps=10, bleu_sentences=0, progress=False)
    tr = TT.train_translation(cfg, echo=quiet)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in log if r["kind"] == "epoch"]
    assert val[-1] < val[0] < np.log(600)
    out = translate_texts(tr.model, tr.tokenizer, ["Ein Mann sitzt auf einer Bank."], beam_size=1)[0]
    assert out and all(ord(c) < 128 for c in out)
