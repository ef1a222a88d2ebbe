"""`scratchllm explain llama`: RMSNorm, RoPE, grouped-query attention and SwiGLU of a Llama-family model,
and its backward pass. The returned and printed numbers are checked against transformers' LlamaForCausalLM
(random weights saved with save_pretrained, read with sl.load; its values caught with forward hooks, its
rotation done by its own rotary module) and against hand computation here."""
import math
import re

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main
from scratchllm.explain.llama import gqa_view, rmsnorm_view, rope_view, swiglu_view
from scratchllm.tokenizers import CharTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()

TEXT = "the cat sat on the mat. "
PROMPT = "the cat sat on"
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
SHAPES = {  # name -> settings of transformers' LlamaConfig
    "gqa-llama3-untied": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=500000.0,
                              rope_scaling=LLAMA3, tie_word_embeddings=False),
    "mqa-biases-tied": dict(num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                            tie_word_embeddings=True),
}
NUM = r"[+-]?\d+\.\d+(?:e[+-]\d+)?"


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, tmp_path_factory):
    """(transformers model, our model read from its save_pretrained directory, our checkpoint with a tokenizer,
    the tokenizer)."""
    tok = CharTokenizer().train(TEXT)
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in SHAPES[request.param].items()}
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=40,
                                   num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None, **settings)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights at a scale where every number is visible (HF's init keeps them near 0)
        for name, p in ref.named_parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g) if "norm" in name else
                    torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.ndim == 2 else 5))
    d = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(d / "hf")
    model = sl.load(d / "hf")
    sl.save(model, d / "ckpt", tokenizer=tok)
    return ref, model, d / "ckpt", tok


def caught(ref, ids):
    """transformers' forward on ids with the inputs and outputs of its modules caught by hooks:
    name -> (input, output) as float64 NumPy arrays (batch row 0)."""
    got = {}

    def hook(name):
        def f(module, args, output):
            got[name] = (args[0][0].detach().double().numpy(), output[0].detach().double().numpy())
        return f

    handles = []
    for name, module in ref.named_modules():
        if re.search(r"(input_layernorm|post_attention_layernorm|q_proj|k_proj|gate_proj|up_proj|act_fn|"
                     r"down_proj|model\.norm)$", name):
            handles.append(module.register_forward_hook(hook(name)))
    with torch.no_grad():
        logits = ref(torch.tensor([ids])).logits[0].double().numpy()
    for h in handles:
        h.remove()
    return got, logits


def rotated(ref, x, positions):
    """x (heads, T, D) turned by transformers' own rotary module at ``positions``."""
    pos = torch.tensor([positions])
    t = torch.tensor(x, dtype=torch.float64)[None]
    cos, sin = ref.model.rotary_emb(t, pos)
    out, _ = apply_rotary_pos_emb(t, t, cos.double(), sin.double())
    return out[0].numpy()


def heads(a, n, D):
    """(T, n·D) -> (n, T, D)."""
    return a.reshape(a.shape[0], n, D).transpose(1, 0, 2)


# ---- the data functions against transformers ----------------------------------------------
def test_rmsnorm_view(pair):
    ref, model, _, tok = pair
    ids = tok.encode(PROMPT)
    got, _ = caught(ref, ids)
    tr = sl.explain.trace(model, np.array(ids))
    for layer, norm, hf in [(0, "ln_1", "model.layers.0.input_layernorm"),
                            (1, "ln_1", "model.layers.1.input_layernorm"),
                            (1, "ln_2", "model.layers.1.post_attention_layernorm"), (0, "ln_f", "model.norm")]:
        x, y = got[hf]
        for P in (0, 5, len(ids) - 1):
            v = rmsnorm_view(tr, model, layer, P, norm)
            np.testing.assert_allclose(v["x"], x[P], rtol=1e-5, atol=1e-5)
            rms = math.sqrt(sum(a * a for a in x[P]) / len(x[P]) + 1e-5)  # by hand
            assert v["rms"] == pytest.approx(rms, rel=1e-5)
            assert v["mean_square"] == pytest.approx(rms * rms - 1e-5, rel=1e-5)
            np.testing.assert_allclose(v["xhat"], x[P] / rms, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v["out"], y[P], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v["model_out"], y[P], rtol=1e-5, atol=1e-5)
            assert v["max_diff"] < 1e-5


def test_rope_view_against_transformers_rotation(pair):
    ref, model, _, tok = pair
    ids = tok.encode(PROMPT)
    cfg = ref.config
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    got, _ = caught(ref, ids)
    tr = sl.explain.trace(model, np.array(ids))
    # θ by hand from the config, Llama 3 scaling written out here; and transformers' own inv_freq
    rs = cfg.rope_parameters  # transformers 5 keeps rope_theta and rope_scaling here
    base = rs["rope_theta"]
    theta = base ** -(np.arange(0, D, 2) / D)
    if rs.get("rope_type") == "llama3":
        old = rs["original_max_position_embeddings"]
        scaled = []
        for t in theta:
            wavelength = 2 * math.pi / t
            if wavelength < old / rs["high_freq_factor"]:
                scaled.append(t)
            elif wavelength > old / rs["low_freq_factor"]:
                scaled.append(t / rs["factor"])
            else:
                s = (old / wavelength - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
                scaled.append((1 - s) * t / rs["factor"] + s * t)
        theta = np.array(scaled)
        assert not np.allclose(theta, base ** -(np.arange(0, D, 2) / D))  # the scaling matters here
    np.testing.assert_allclose(theta, ref.model.rotary_emb.inv_freq.double().numpy(), rtol=1e-6)
    T = len(ids)
    q_pre = heads(got["model.layers.1.self_attn.q_proj"][1], H, D)  # (H, T, D)
    k_pre = heads(got["model.layers.1.self_attn.k_proj"][1], Hkv, D)  # (Hkv, T, D)
    q_all, k_all = rotated(ref, q_pre, list(range(T))), rotated(ref, k_pre, list(range(T)))
    checked = 0
    for head, P, K in [(0, T - 1, 0), (3, T - 1, 4), (2, 6, 6), (1, 9, 2)]:
        v = rope_view(tr, model, 1, head, P, K, shift=40)
        g = head // (H // Hkv)  # transformers' repeat_kv: query head h reads key/value head h // group
        assert v["kv_head"] == g
        np.testing.assert_allclose(v["theta"], theta, rtol=1e-9)
        np.testing.assert_allclose(v["q_angle"], P * theta, rtol=1e-9)
        np.testing.assert_allclose(v["k_angle"], K * theta, rtol=1e-9)
        np.testing.assert_allclose(v["q_pre"], q_pre[head, P], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v["k_pre"], k_pre[g, K], rtol=1e-5, atol=1e-5)
        for name in ("q", "q_model"):
            np.testing.assert_allclose(v[name], q_all[head, P], rtol=1e-5, atol=1e-5)
        for name in ("k", "k_model"):
            np.testing.assert_allclose(v[name], k_all[g, K], rtol=1e-5, atol=1e-5)
        score = q_all[head, P] @ k_all[g, K] / math.sqrt(D)
        assert v["score"] == pytest.approx(score, rel=1e-5, abs=1e-5)
        assert v["model_score"] == pytest.approx(score, rel=1e-4, abs=1e-4)
        # each row: the same q and k turned by transformers at those positions
        for r in v["rows"]:
            qr = rotated(ref, q_pre[head][None, [P]], [r["q_pos"]])[0, 0]
            kr = rotated(ref, k_pre[g][None, [K]], [r["k_pos"]])[0, 0]
            assert r["distance"] == r["q_pos"] - r["k_pos"]
            assert r["score"] == pytest.approx(qr @ kr / math.sqrt(D), rel=1e-5, abs=1e-5)
            checked += 1
        # the relative-position property, numerically: same distance same score, other distances differ
        same = [r["score"] for r in v["rows"] if r["distance"] == P - K]
        other = [r["score"] for r in v["rows"] if r["distance"] != P - K]
        assert len(same) >= 3 and len(other) >= 1
        assert max(same) - min(same) < 1e-9
        assert all(abs(s - score) > 1e-4 for s in other)
        np.testing.assert_allclose(v["pair_dot"], v["pair_dot_shifted"], atol=1e-9)
        assert v["pair_dot"].sum() / math.sqrt(D) == pytest.approx(score, rel=1e-5, abs=1e-5)
    assert checked >= 16


def test_gqa_view_by_hand(pair):
    ref, model, _, _ = pair
    cfg = ref.config
    H, Hkv, D, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    v = gqa_view(model)
    # transformers repeats each key/value head for H / Hkv consecutive query heads (repeat_kv)
    k = torch.arange(Hkv, dtype=torch.float32).reshape(1, Hkv, 1, 1)
    from transformers.models.llama.modeling_llama import repeat_kv
    reader = repeat_kv(k, H // Hkv).reshape(-1).int().tolist()
    assert [(grp["kv_head"], grp["query_heads"]) for grp in v["groups"]] == \
        [(g, [h for h in range(H) if reader[h] == g]) for g in range(Hkv)]
    assert v["bytes_per_token"] == 2 * L * Hkv * D * 4
    assert v["bytes_per_token_mha"] == 2 * L * H * D * 4
    assert v["bytes_context"] == 2 * L * Hkv * D * 4 * 64 and v["ratio"] == H / Hkv
    # what our own cache really holds per token
    cache = model.new_cache(1)
    model(np.array([[1, 2, 3]]), cache=cache)
    held = sum(a[:, :, :cache.length].nbytes for a in cache.k + cache.v) / cache.length
    assert held == v["bytes_per_token"]


def test_swiglu_view(pair):
    ref, model, _, tok = pair
    ids = tok.encode(PROMPT)
    got, _ = caught(ref, ids)
    tr = sl.explain.trace(model, np.array(ids))
    for layer in (0, 1):
        m = f"model.layers.{layer}.mlp."
        for P in (0, len(ids) - 1):
            v = swiglu_view(tr, model, layer, P)
            gate = got[m + "gate_proj"][1][P]
            np.testing.assert_allclose(v["x"], got[m + "gate_proj"][0][P], rtol=1e-5, atol=1e-5)
            for name in ("gate", "gate_computed"):
                np.testing.assert_allclose(v[name], gate, rtol=1e-5, atol=1e-5)
            silu = np.array([g / (1 + math.exp(-g)) for g in gate])  # by hand: x·σ(x)
            np.testing.assert_allclose(v["sigmoid"], 1 / (1 + np.exp(-gate)), rtol=1e-5, atol=1e-6)
            for name in ("silu", "silu_model"):
                np.testing.assert_allclose(v[name], got[m + "act_fn"][1][P], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(v[name], silu, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(v["up"], got[m + "up_proj"][1][P], rtol=1e-5, atol=1e-5)
            for name in ("prod", "prod_model"):
                np.testing.assert_allclose(v[name], got[m + "down_proj"][0][P], rtol=1e-5, atol=1e-5)
            for name in ("out", "out_model"):
                np.testing.assert_allclose(v[name], got[m + "down_proj"][1][P], rtol=1e-5, atol=1e-5)


# ---- the printout ----------------------------------------------------------------------------
def printed(capsys, ckpt, *args):
    assert main(["explain", "llama", "--model", str(ckpt), "--text", PROMPT, "--full", *args]) == 0
    return capsys.readouterr().out


def section(out, title):
    body = out.split(title, 1)[1]
    return re.split(r"\nStep \d+\. ", body, maxsplit=1)[0]


def table(body, n_cols, first=r"\d+"):
    rows = []
    for line in body.splitlines():
        m = re.fullmatch(rf"\s+({first})" + rf"\s+({NUM})" * n_cols + r"\s*", line)
        if m:
            rows.append([float(x) for x in m.groups()])
    return np.array(rows)


def test_printed_numbers(pair, capsys):
    ref, model, ckpt, tok = pair
    ids = tok.encode(PROMPT)
    T, C, layer, head, K = len(ids), 32, 1, 3, 4
    cfg = ref.config
    H, Hkv, D, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    got, _ = caught(ref, ids)
    out = printed(capsys, ckpt, "--layer", str(layer), "--head", str(head), "--key-position", str(K), "--shift", "7")
    assert [int(n) for n in re.findall(r"^Step (\d+)\. ", out, flags=re.M)] == [1, 2, 3, 4]

    # RMSNorm: i, x, x², x / rms, weight, out, model's
    x, y = got[f"model.layers.{layer}.input_layernorm"]
    rows = table(section(out, "Step 1. RMSNorm"), 6)
    assert len(rows) == C
    rms = math.sqrt(np.mean(x[-1] ** 2) + 1e-5)
    np.testing.assert_allclose(rows[:, 1], x[-1], atol=1e-5)
    np.testing.assert_allclose(rows[:, 2], x[-1] ** 2, atol=1e-5)
    np.testing.assert_allclose(rows[:, 3], x[-1] / rms, atol=1e-5)
    np.testing.assert_allclose(rows[:, 4], ref.model.layers[layer].input_layernorm.weight.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(rows[:, 5], y[-1], atol=5e-6)
    np.testing.assert_allclose(rows[:, 6], y[-1], atol=5e-6)
    assert f"= {rms:.6f}" in section(out, "Step 1. RMSNorm")

    # RoPE: the pair table (θ, [unscaled], q angle, k angle), the shares, the score rows
    rope = section(out, "Step 2. Rotary positions")
    theta = ref.model.rotary_emb.inv_freq.double().numpy()
    scaled = "unscaled" in rope
    angles = []
    for line in rope.splitlines():
        m = re.match(rf"\s+(\d+)\s+(\S+)\s+" + (r"\S+\s+" if scaled else "") + rf"({NUM})\s+({NUM})\s+\(", line)
        if m:
            angles.append([float(m[2]), float(m[3]), float(m[4])])
    angles = np.array(angles)
    assert len(angles) == D // 2
    np.testing.assert_allclose(angles[:, 0], theta, rtol=1e-5)
    np.testing.assert_allclose(angles[:, 1], (T - 1) * theta, atol=6e-5)
    np.testing.assert_allclose(angles[:, 2], K * theta, atol=6e-5)
    q_pre = heads(got[f"model.layers.{layer}.self_attn.q_proj"][1], H, D)
    k_pre = heads(got[f"model.layers.{layer}.self_attn.k_proj"][1], Hkv, D)
    g = head // (H // Hkv)
    q = rotated(ref, q_pre[head][None, [T - 1]], [T - 1])[0, 0]
    k = rotated(ref, k_pre[g][None, [K]], [K])[0, 0]
    pairs = re.findall(r"\((" + NUM + r"),(" + NUM + r")\)→\((" + NUM + r"),(" + NUM + r")\) \((" + NUM + r"),("
                       + NUM + r")\)", rope)
    assert len(pairs) == D  # a query pair and a key pair on each of D/2 rows
    qp, kp = np.array(pairs[0::2], dtype=float), np.array(pairs[1::2], dtype=float)
    h = D // 2
    np.testing.assert_allclose(qp[:, 0], q_pre[head, T - 1, :h], atol=6e-4)
    np.testing.assert_allclose(qp[:, 1], q_pre[head, T - 1, h:], atol=6e-4)
    for cols in (slice(2, 4), slice(4, 6)):
        np.testing.assert_allclose(qp[:, cols], np.stack([q[:h], q[h:]], 1), atol=6e-4)
        np.testing.assert_allclose(kp[:, cols], np.stack([k[:h], k[h:]], 1), atol=6e-4)
    score = float(q @ k) / math.sqrt(D)
    m = re.search(rf"score = q·k / √{D} = ({NUM})\s+\(the model's score ({NUM})\)", rope)
    assert float(m[1]) == pytest.approx(score, abs=2e-6) and float(m[2]) == pytest.approx(score, abs=2e-5)
    shares = table(rope.split("Why only the distance counts", 1)[1].split("The same q and k", 1)[0], 3)
    assert len(shares) == h
    np.testing.assert_allclose(shares[:, 1], (T - 1 - K) * theta, atol=6e-5)
    np.testing.assert_allclose(shares[:, 2], q[:h] * k[:h] + q[h:] * k[h:], atol=1e-5)
    np.testing.assert_allclose(shares[:, 3], shares[:, 2], atol=1e-6)
    rows = [(int(a), int(b), int(c), float(s)) for a, b, c, s in
            re.findall(rf"^\s+(\d+)\s+(\d+)\s+(-?\d+)\s+({NUM})\s+\S", rope.split("The same q and k", 1)[1], re.M)]
    assert len(rows) == 6 and (T - 1 + 7, K + 7, T - 1 - K) == rows[1][:3]
    for qpos, kpos, dist, s in rows:
        qr = rotated(ref, q_pre[head][None, [T - 1]], [qpos])[0, 0]
        kr = rotated(ref, k_pre[g][None, [K]], [kpos])[0, 0]
        assert dist == qpos - kpos and s == pytest.approx(float(qr @ kr) / math.sqrt(D), abs=2e-6)

    # GQA: the groups and the bytes
    gqa = section(out, "Step 3. Grouped-query attention")
    groups = re.findall(r"key/value head (\d+): query heads ([\d, ]+)", gqa)
    assert [(int(a), [int(x) for x in b.split(", ")]) for a, b in groups] == \
        [(j, list(range(j * H // Hkv, (j + 1) * H // Hkv))) for j in range(Hkv)]
    assert f"= {2 * 2 * Hkv * D * 4:,} bytes" in gqa and f"= {2 * 2 * H * D * 4:,} bytes" in gqa

    # SwiGLU: j, gate, σ, silu, model's, up, product, model's
    rows = table(section(out, "Step 4. SwiGLU"), 7)
    assert len(rows) == I
    mlp = f"model.layers.{layer}.mlp."
    gate, up = got[mlp + "gate_proj"][1][-1], got[mlp + "up_proj"][1][-1]
    np.testing.assert_allclose(rows[:, 1], gate, atol=2e-5)
    np.testing.assert_allclose(rows[:, 2], 1 / (1 + np.exp(-gate)), atol=2e-5)
    for c in (3, 4):
        np.testing.assert_allclose(rows[:, c], gate / (1 + np.exp(-gate)), atol=2e-5)
    np.testing.assert_allclose(rows[:, 5], up, atol=2e-5)
    for c in (6, 7):
        np.testing.assert_allclose(rows[:, c], got[mlp + "down_proj"][0][-1], atol=2e-5)
    down = re.search(r"down: out = \(silu × up\) · W_downᵀ = (.*)", out)[1]
    np.testing.assert_allclose(np.array(down.split(), dtype=float), got[mlp + "down_proj"][1][-1], atol=6e-5)


@pytest.mark.parametrize("norm, hf", [("ln_2", "model.layers.1.post_attention_layernorm"), ("ln_f", "model.norm")])
def test_printed_other_norms(pair, capsys, norm, hf):
    ref, _, ckpt, tok = pair
    got, _ = caught(ref, tok.encode(PROMPT))
    x, y = got[hf]
    out = printed(capsys, ckpt, "--show", "rmsnorm", "--norm", norm, "--layer", "1", "--position", "3")
    rows = table(section(out, "Step 1. RMSNorm"), 6)
    assert len(rows) == 32 and f"({'h.1.ln_2' if norm == 'ln_2' else 'ln_f'})" in out
    np.testing.assert_allclose(rows[:, 1], x[3], atol=1e-5)
    np.testing.assert_allclose(rows[:, 3], x[3] / math.sqrt(np.mean(x[3] ** 2) + 1e-5), atol=1e-5)
    np.testing.assert_allclose(rows[:, 5], y[3], atol=1e-5)


def test_a_llama_trained_here(tmp_path, capsys):
    from scratchllm import train as T

    (tmp_path / "corpus.txt").write_text(TEXT * 40)
    T.train(T.TrainConfig(data=str(tmp_path / "corpus.txt"), out=str(tmp_path / "run"), arch="llama", n_layer=2,
                          n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=3, eval_iters=1,
                          progress=False, sample_tokens=0, snapshots=0), echo=lambda *a: None)
    model = sl.load(tmp_path / "run")
    out = printed(capsys, tmp_path / "run", "--layer", "1", "--target", "m")
    assert re.findall(r"^Step (\d+)\. (\S+)", out, flags=re.M)[:5] == [
        ("1", "RMSNorm:"), ("2", "Rotary"), ("3", "Grouped-query"), ("4", "SwiGLU,"), ("5", "The")]
    assert len(re.findall(r"^Step \d+\. ", out, flags=re.M)) == 10
    ids = np.array(sl.checkpoint.load_tokenizer(tmp_path / "run").encode(PROMPT))
    tr = sl.explain.trace(model, ids)
    v = rope_view(tr, model, 1, 0, len(ids) - 1, 0)
    assert v["model_score"] == pytest.approx(v["score"], abs=1e-5)
    assert f"score = q·k / √{model.head_dim} = {v['score']:+.6f}" in out


def test_views_as_json(pair):
    import json

    from scratchllm.explain.llama import plain

    _, model, _, tok = pair
    tr = sl.explain.trace(model, np.array(tok.encode(PROMPT)))
    v = rope_view(tr, model, 0, 1, 5, 2, shift=3)
    back = json.loads(json.dumps(plain(v)))
    assert back["q"] == pytest.approx(list(v["q"])) and back["rows"][1]["q_pos"] == 8 and back["rows"][1]["k_pos"] == 5
    for view in (rmsnorm_view(tr, model), gqa_view(model), swiglu_view(tr, model, 1, 4)):
        json.dumps(plain(view))


def test_show_picks_sections(pair, capsys):
    _, _, ckpt, _ = pair
    out = printed(capsys, ckpt, "--show", "swiglu,gqa")
    assert re.findall(r"^Step \d+\. (\S+)", out, flags=re.M) == ["Grouped-query", "SwiGLU,"]


def test_backward_and_sgd_step_against_torch(pair, capsys):
    """--target: the loss, d loss / d logits and the largest weight gradients (under Hugging Face's names)
    equal torch's backward through transformers; each new value is old − lr × gradient."""
    ref, model, ckpt, tok = pair
    ids, target, lr = tok.encode(PROMPT), tok.encode("e")[0], 0.05
    out = printed(capsys, ckpt, "--show", "rmsnorm", "--target", "e", "--lr", str(lr))
    ref.zero_grad()
    logits = ref(torch.tensor([ids])).logits[0, -1].double()
    loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([target]))
    loss.backward()
    m = re.search(rf"^Step 2\. The loss: .* loss = −log p = ({NUM})", out, flags=re.M)
    assert float(m[1]) == pytest.approx(loss.item(), abs=2e-5)
    p = torch.softmax(logits, -1).detach().numpy()
    seen = 0
    for line in section(out, "Step 3. The backward pass").splitlines():
        m = re.match(rf"\s+'(.)'\s+(\d+)\s+({NUM})\s+([01])\s+({NUM})$", line)
        if m:
            i, seen = int(m[2]), seen + 1
            assert float(m[3]) == pytest.approx(p[i], abs=2e-6) and int(m[4]) == (i == target)
            assert float(m[5]) == pytest.approx(p[i] - (i == target), abs=1e-6)
    assert seen == 10
    params = dict(ref.named_parameters())
    rows = re.findall(rf"^\s+([\w.]+)\[([\d,]+)\]\s+({NUM})\s+({NUM})\s+({NUM})$",
                      section(out, "Step 5. The 10 weights"), flags=re.M)
    assert len(rows) == 10
    for name, index, old, grad, new in rows:
        where = tuple(int(i) for i in index.split(","))
        want = params[name].grad[where].item()
        assert float(old) == pytest.approx(params[name][where].item(), abs=2e-6)
        assert float(grad) == pytest.approx(want, rel=1e-3, abs=1e-5)
        assert float(new) == pytest.approx(float(old) - lr * want, abs=1e-5)
    m = re.search(rf"Step 7\. One SGD step with lr {lr:g}.*loss ({NUM}) → ({NUM})", out)
    with torch.no_grad():  # the step taken on transformers' copy of the weights
        for q in ref.parameters():
            if q.grad is not None:
                q -= lr * q.grad
        after = torch.nn.functional.cross_entropy(ref(torch.tensor([ids])).logits[0, -1:].double(),
                                                  torch.tensor([target])).item()
        for q in ref.parameters():
            if q.grad is not None:
                q += lr * q.grad
    assert float(m[1]) == pytest.approx(loss.item(), abs=2e-5)
    assert float(m[2]) == pytest.approx(after, abs=1e-4)


def test_smollm2_gguf():
    """The real model: θ = 100000^(−2i/64) by hand, the relative-position property at distances far apart,
    nine query heads on three key/value heads, 46,080 bytes of cache a token in float32."""
    from smollm2_refs import ours

    model, tok = ours()
    ids = np.array(tok.encode("The capital of France is"))
    tr = sl.explain.trace(model, ids)
    v = rope_view(tr, model, layer=5, head=7, q_pos=len(ids) - 1, k_pos=1, shift=5000)
    np.testing.assert_allclose(v["theta"], [100000.0 ** (-2 * i / 64) for i in range(32)], rtol=1e-12)
    assert v["kv_head"] == 2 and v["rows"][1]["q_pos"] == len(ids) - 1 + 5000
    same = [r["score"] for r in v["rows"] if r["distance"] == v["q_pos"] - v["k_pos"]]
    assert len(same) == 3 and max(same) - min(same) < 1e-9
    assert v["model_score"] == pytest.approx(v["score"], abs=1e-4)
    g = gqa_view(model)
    assert [grp["query_heads"] for grp in g["groups"]] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert g["bytes_per_token"] == 2 * 30 * 3 * 64 * 4 == 46080 and g["bytes_context"] == 46080 * 8192
    r = rmsnorm_view(tr, model, 0, 2)
    x = tr["emb"][0, 2].astype(np.float64)
    assert r["rms"] == pytest.approx(math.sqrt(np.mean(x * x) + model.config.rms_norm_eps), rel=1e-12)
    assert r["max_diff"] < 1e-5
    s = swiglu_view(tr, model, 29, 0)
    for a, b in [("gate_computed", "gate"), ("silu", "silu_model"), ("prod", "prod_model"), ("out", "out_model")]:
        np.testing.assert_allclose(s[a], s[b], atol=1e-5 * np.abs(s[b]).max())  # float32 sums of 576 / 1536 terms
    np.testing.assert_allclose(s["silu"], s["gate"] / (1 + np.exp(-s["gate"])), rtol=1e-12)


def test_qwen3_rotates_what_its_q_norm_gives(tmp_path):
    """Qwen3 normalises each head's q and k before RoPE, and its head_dim (12) is not hidden / heads: the view
    rotates q_pre (after q_norm) and lands on transformers' rotated query."""
    cfg = transformers.Qwen3Config(vocab_size=20, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                   max_position_embeddings=32, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=None)
    torch.manual_seed(0)
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    ref.save_pretrained(tmp_path)
    model = sl.load(tmp_path)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    got = {}
    attn = ref.model.layers[0].self_attn
    hooks = [attn.q_norm.register_forward_hook(lambda m, a, o: got.__setitem__("q", o[0].detach().double())),
             attn.k_norm.register_forward_hook(lambda m, a, o: got.__setitem__("k", o[0].detach().double()))]
    with torch.no_grad():
        ref(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    q_pre, k_pre = got["q"].transpose(0, 1).numpy(), got["k"].transpose(0, 1).numpy()  # (H, T, 12), (Hkv, T, 12)
    tr = sl.explain.trace(model, np.array(ids))
    v = rope_view(tr, model, 0, 3, 7, 2, shift=5)
    np.testing.assert_allclose(v["q_pre"], q_pre[3, 7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v["k_pre"], k_pre[1, 2], rtol=1e-5, atol=1e-5)
    q = rotated(ref, q_pre[3][None, [7]], [7])[0, 0]
    k = rotated(ref, k_pre[1][None, [2]], [2])[0, 0]
    np.testing.assert_allclose(v["q"], q, rtol=1e-5, atol=1e-5)
    assert v["score"] == pytest.approx(float(q @ k) / math.sqrt(12), abs=1e-5)
    assert v["model_score"] == pytest.approx(v["score"], abs=1e-5) and v["theta"].shape == (6,)
