"""`scratchllm explain positions`: the printed table is the formula's, or the checkpoint's rows.

The sinusoidal values are recomputed here with math.sin / math.cos straight
from PE[p, 2i] = sin(p / 10000^(2i/C)), PE[p, 2i+1] = cos(same angle); learned
rows are read back from the safetensors file on disk.
"""
import math
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.hf import save_hf_gpt2
from scratchllm.models import GPT, GPTConfig, Transformer, TransformerConfig
from scratchllm.models.classifier import Classifier

NUM = r"([+-]?\d+\.\d+)"
PRINTED = 5.1e-5  # 4 decimals, and float32 slack


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def parse_table(text):
    """(dims, {p: [values]}, norms {p: |row|} or {}, frequencies or None)."""
    dims = [int(d) for d in re.search(r"^    dim((?:\s+\d+)+)", text, re.M)[1].split()]
    rows, norms = {}, {}
    for m in re.finditer(r"^    p=(\d+)\s+(.*)$", text, re.M):
        values = [float(v) for v in re.findall(r"[+-]?\d+\.\d+", m[2])]
        rows[int(m[1])] = values[:len(dims)]
        if len(values) == len(dims) + 1:
            norms[int(m[1])] = values[-1]
    f = re.search(r"^    f\s+(.*)$", text, re.M)
    assert rows and all(len(v) == len(dims) for v in rows.values()), rows  # a number under every dim shown
    assert not f or len(f[1].split()) == len(dims)
    return dims, rows, norms, [float(v) for v in f[1].split()] if f else None


def formula(p, d, width):
    angle = p / 10000 ** ((d - d % 2) / width)
    return math.sin(angle) if d % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("width, positions, dims", [(128, 8, 8), (16, 5, 16), (7, 12, 7), (1, 3, 4)])
def test_sinusoidal_table_is_the_formula(width, positions, dims, capsys):
    code, out, err = run(capsys, ["explain", "positions", "--width", str(width), "--positions", str(positions),
                                  "--dims", str(dims)])
    assert code == 0 and err == ""
    assert "PE[p, 2i]   = sin(p / 10000^(2i/C))" in out and "PE[p, 2i+1] = cos(p / 10000^(2i/C))" in out
    shown, rows, norms, freqs = parse_table(out)
    assert shown == list(range(min(dims, width))) and sorted(rows) == list(range(positions)) and not norms
    for d, f in zip(shown, freqs):
        assert f == pytest.approx(1 / 10000 ** ((d - d % 2) / width), abs=PRINTED)
    for p, values in rows.items():
        for d, v in zip(shown, values):
            assert v == pytest.approx(formula(p, d, width), abs=PRINTED), (p, d)
    # The entry worked out in words.
    m = re.search(r"For example PE\[(\d+), (\d+)\] = .* = sin\(" + NUM + r"\) = " + NUM, out)
    p, d = int(m[1]), int(m[2])
    assert float(m[3]) == pytest.approx(p / 10000 ** (d / width), abs=PRINTED)
    assert float(m[4]) == pytest.approx(formula(p, d, width), abs=PRINTED)


def test_learned_gpt_rows_are_the_checkpoint_weights(tmp_path, capsys):
    model = GPT(GPTConfig(vocab_size=11, block_size=10, n_layer=1, n_head=2, n_embd=12), seed=4)
    model.transformer.wpe.weight.data[...] *= 30  # rows of order 1, so 4 decimals say a lot
    d = sl.save(model, tmp_path / "gpt")
    code, out, err = run(capsys, ["explain", "positions", "--ckpt", str(d), "--positions", "20", "--dims", "5"])
    assert code == 0 and err == "" and "transformer.wpe.weight" in out
    wpe = load_file(str(d / "model.safetensors"))["transformer.wpe.weight"].astype(np.float64)
    shown, rows, norms, _ = parse_table(out)
    assert shown == list(range(5)) and sorted(rows) == list(range(10))  # the block has 10 positions
    for p, values in rows.items():
        np.testing.assert_allclose(values, wpe[p, :5], atol=PRINTED)
        assert norms[p] == pytest.approx(np.linalg.norm(wpe[p]), abs=PRINTED)


def test_sinusoidal_gpt_shows_its_table(tmp_path, capsys):
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=10, positional="sinusoidal"))
    d = sl.save(model, tmp_path / "gpt")
    code, out, err = run(capsys, ["explain", "positions", "--ckpt", str(d), "--dims", "10"])
    assert code == 0 and "width C = 10" in out
    shown, rows, _, _ = parse_table(out)
    assert sorted(rows) == list(range(6)) and shown == list(range(10))
    for p, values in rows.items():
        np.testing.assert_allclose(values, [formula(p, k, 10) for k in shown], atol=PRINTED)


def test_learned_transformer_and_hf_gpt2(tmp_path, capsys):
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=6, d_model=8, n_head=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=16, max_len=5, positional="learned")
    d = sl.save(Transformer(cfg), tmp_path / "tr")
    code, out, _ = run(capsys, ["explain", "positions", "--ckpt", str(d)])
    assert code == 0 and "src_pos_embed.weight" in out
    table = load_file(str(d / "model.safetensors"))["src_pos_embed.weight"]
    _, rows, _, _ = parse_table(out)
    assert sorted(rows) == list(range(5))  # max_len 5
    for p, values in rows.items():
        np.testing.assert_allclose(values, table[p, :8], atol=PRINTED)

    gpt = GPT(GPTConfig(vocab_size=11, block_size=4, n_layer=1, n_head=2, n_embd=8))
    hf = save_hf_gpt2(gpt, tmp_path / "hf")
    code, out, _ = run(capsys, ["explain", "positions", "--ckpt", str(hf)])
    assert code == 0
    tensors = load_file(str(hf / "model.safetensors"))
    wpe = tensors.get("wpe.weight", tensors.get("transformer.wpe.weight"))  # HF writes either
    _, rows, _, _ = parse_table(out)
    assert sorted(rows) == list(range(4))
    for p, values in rows.items():
        np.testing.assert_allclose(values, wpe[p, :8], atol=PRINTED)


@pytest.mark.parametrize("args, words", [(["--dims", "0"], "--dims must be at least 1"),
                                         (["--positions", "x"], "--positions must be an integer"),
                                         (["--width", "0"], "--width must be at least 1"),
                                         (["--ckpt", "no/such/dir"], "does not exist")])
def test_bad_options_are_one_line(args, words, capsys):
    code, out, err = run(capsys, ["explain", "positions", *args])
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err


def test_a_model_without_positions_is_refused(tmp_path, capsys):
    d = sl.save(Classifier(), tmp_path / "clf")
    code, out, err = run(capsys, ["explain", "positions", "--ckpt", str(d)])
    assert code == 2 and err.count("\n") == 1 and "no positions" in err
