"""Layer normalisation in `explain gpt`, in the order it happens: the input, the normalised vector x̂
(mean 0, std 1; an RMSNorm: root mean square 1), the learned scale, the learned shift, and the model's
own output. Each printed vector is checked against PyTorch's layer_norm / rms formula on the model's own
residual stream; the per-layer line of Step 3 likewise."""
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.models import GPT, GPTConfig
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.tokenizers import CharTokenizer

torch = pytest.importorskip("torch")

TEXT = "the cat sat on the mat. "
VEC = r"((?:[+-]\d+\.\d{4} ?)+)"


def save(model, tmp_path, tok):
    d = tmp_path / "ckpt"
    sl.save(model, d, tokenizer=tok)
    return d


def printed(capsys, ckpt, text):
    assert main(["explain", "gpt", "--ckpt", str(ckpt), "--text", text, "--full"]) == 0
    return capsys.readouterr().out


def rows_of_step7(out):
    body = out.split("Step 7. ", 1)[1].split("\nStep 8.", 1)[0]
    rows = {}
    for line in body.splitlines():
        m = re.match(r"^ {4}(\d\. \S.*?|   \S.*?)\s{2,}(mean [+-]\d\.\d{4} std \d+\.\d{4}|rms \d+\.\d{4})?\s*" + VEC, line)
        if m:
            rows[m[1].strip()] = (m[2], np.array(m[3].split(), dtype=float))
    return body, rows


def test_layer_norm_in_the_order_it_happens(tmp_path, capsys):
    tok = CharTokenizer().train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=3)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():  # a learned scale and shift that are not 1 and 0
        if p.data.ndim == 1:
            p.data[...] = rng.normal(1.0 if p.data.mean() == 1 else 0.0, 0.3, p.shape)
    out = printed(capsys, save(model, tmp_path, tok), "the cat")
    ids = np.array(tok.encode("the cat"))
    tr = sl.explain.trace(model, ids)
    x = torch.tensor(tr["h.1.resid_2"][0, -1], dtype=torch.float64)
    ln = model.transformer.ln_f
    w, b = (torch.tensor(t.data, dtype=torch.float64) for t in (ln.weight, ln.bias))
    xhat = torch.nn.functional.layer_norm(x, (16,), eps=1e-5)
    body, rows = rows_of_step7(out)
    labels = list(rows)
    assert labels == ["1. its input x", "x̂ = (x − mean) / std", "3. scale: x̂ × weight (learned)",
                      "4. shift: + bias (learned)", "the model's own output"], labels
    assert body.index("subtract the mean") < body.index("3. scale") < body.index("4. shift")
    np.testing.assert_allclose(rows["1. its input x"][1], x.numpy(), atol=6e-5)
    np.testing.assert_allclose(rows["x̂ = (x − mean) / std"][1], xhat.numpy(), atol=6e-5)
    assert rows["x̂ = (x − mean) / std"][0] in ("mean +0.0000 std 1.0000", "mean -0.0000 std 1.0000")
    np.testing.assert_allclose(rows["3. scale: x̂ × weight (learned)"][1], (xhat * w).numpy(), atol=6e-5)
    full = torch.nn.functional.layer_norm(x, (16,), w, b, eps=1e-5)
    np.testing.assert_allclose(rows["4. shift: + bias (learned)"][1], full.numpy(), atol=6e-5)
    np.testing.assert_allclose(rows["the model's own output"][1], full.numpy(), atol=6e-5)
    # Step 3: each layer's ln_1, its input's mean and std → x̂ → after the scale and shift
    for i, line in enumerate(l for l in out.split("Step 3. ", 1)[1].split("\nStep 4.")[0].splitlines()
                             if l.strip().startswith("layer ")):
        nums = [float(v) for v in re.findall(r"mean ([+-]\d\.\d{4}) std (\d+\.\d{4})", line)[0]]
        xin = torch.tensor((tr["emb"] if i == 0 else tr[f"h.{i - 1}.resid_2"])[0, -1], dtype=torch.float64)
        assert nums == pytest.approx([xin.mean().item(), xin.std(unbiased=False).item()], abs=6e-5)
        xhat = torch.nn.functional.layer_norm(xin, (16,), eps=1e-5)
        m = re.search(r"→ x̂ mean ([+-]\d\.\d{4}) std (\d+\.\d{4})", line)
        assert [float(m[1]), float(m[2])] == pytest.approx([0.0, xhat.std(unbiased=False).item()], abs=6e-5)
        if xhat.std(unbiased=False).item() < 0.9995:  # eps matters: said in words
            assert f"(layer {i}" in out and "eps = 1e-05 is added under the square root" in out
        after = torch.nn.functional.layer_norm(xin, (16,), *(torch.tensor(t.data, dtype=torch.float64) for t in (
            model.transformer.h[i].ln_1.weight, model.transformer.h[i].ln_1.bias)), eps=1e-5)
        m = re.search(r"→ out mean ([+-]\d\.\d{4}) std (\d+\.\d{4})", line)
        assert [float(m[1]), float(m[2])] == pytest.approx([after.mean().item(), after.std(unbiased=False).item()],
                                                           abs=6e-5)


def test_rms_norm_of_a_llama(tmp_path, capsys):
    tok = CharTokenizer().train(TEXT)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                      initializer_range=0.4)
    model = Llama(cfg, seed=1)
    out = printed(capsys, save(model, tmp_path, tok), "the cat")
    tr = sl.explain.trace(model, np.array(tok.encode("the cat")))
    x = tr["h.0.resid_2"][0, -1].astype(np.float64)
    rms = np.sqrt(np.mean(x * x) + cfg.rms_norm_eps)
    body, rows = rows_of_step7(out)
    assert "an RMSNorm" in out.split("Step 7. ", 1)[1].splitlines()[0]
    assert list(rows) == ["1. its input x", "x̂ = x / rms", "3. scale: x̂ × weight (learned)", "the model's own output"]
    np.testing.assert_allclose(rows["x̂ = x / rms"][1], x / rms, atol=6e-5)
    assert rows["x̂ = x / rms"][0] == "rms 1.0000"
    np.testing.assert_allclose(rows["the model's own output"][1], tr["ln_f"][0, -1], atol=6e-5)
