"""The explore page's "Llama parts" view: RMSNorm, rotary positions, grouped-query attention and SwiGLU of a
Llama-family checkpoint. Its numbers are explain.llama's (called here on a trace of the same model) and are
checked again by hand: the norm, the rotation of each pair, the sharing of key/value heads, silu(gate) × up.
A GPT checkpoint gets no such view."""
import copy
import math

import numpy as np
import pytest

from scratchllm import train as T
from scratchllm.explain.llama import gqa_view, plain, rmsnorm_view, rope_view, swiglu_view

from test_explore_http import Client, build_gpt_run, serving, trace
from test_train import tiny_config

TEXT = "the cat sat on the mat"
_RUNS = {}


def build_llama_run(d):
    """A small Llama (4 query heads, 2 key/value heads of 8 numbers) trained a few steps on characters."""
    if "llama" not in _RUNS:
        cfg = tiny_config(d, arch="llama", n_layer=2, n_head=4, n_embd=32, block_size=32, max_iters=8, eval_interval=4)
        T.train(cfg, echo=lambda *a: None)
        _RUNS["llama"] = d / "run"
    return _RUNS["llama"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    with serving(build_llama_run(tmp_path_factory.mktemp("llama"))) as (explorer, url):
        yield explorer, url


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    with serving(build_gpt_run(tmp_path_factory.mktemp("gpt"))) as (explorer, url):
        yield explorer, url


def test_the_api_gives_explain_llamas_numbers(llama):
    explorer, url = llama
    model = explorer.model
    assert Client(url).get("info")["llama"] is True
    r = Client(url).post("llama", {"text": TEXT, "layer": 1, "head": 3, "position": 9, "key_position": 4,
                                   "norm": "ln_2", "shift": 7})
    ids = np.array([explorer.tokenizer.encode(TEXT)])
    tr = trace(model, ids)
    expected = {"rmsnorm": rmsnorm_view(tr, model, 1, 9, "ln_2"), "rope": rope_view(tr, model, 1, 3, 9, 4, 7),
                "gqa": gqa_view(model), "swiglu": swiglu_view(tr, model, 1, 9)}
    for section, view in expected.items():
        want = plain(view)
        for key, value in want.items():
            got = r[section][key]
            if isinstance(value, list) and value and isinstance(value[0], dict):  # rope's rows, gqa's groups
                assert len(got) == len(value)
                for g, v in zip(got, value):
                    assert g.keys() == v.keys() and all(g[k] == pytest.approx(v[k], rel=1e-12) if isinstance(v[k], float)
                                                        else g[k] == v[k] for k in v), (section, key)
            elif isinstance(value, (list, float)):
                np.testing.assert_allclose(got, value, rtol=1e-12, atol=1e-12, err_msg=f"{section}.{key}")
            else:
                assert got == value, (section, key)
    assert [t["id"] for t in r["tokens"]] == ids[0].tolist() and r["position"] == 9 and r["key_position"] == 4


def test_the_numbers_checked_by_hand(llama):
    """The same numbers again, from the trace and the weights with plain NumPy: the RMSNorm written out, each
    pair of q and k turned by position × θᵢ, the score at shifted positions, which heads share, silu × up."""
    explorer, url = llama
    model, cfg = explorer.model, explorer.model.config
    q_pos, k_pos, head = 10, 3, 2
    r = Client(url).post("llama", {"text": TEXT, "layer": 0, "head": head, "position": q_pos, "key_position": k_pos})
    tr = trace(model, np.array([explorer.tokenizer.encode(TEXT)]))
    # RMSNorm of layer 0's input (the embeddings): x / √(mean(x²) + eps) × weight, the model's own ln_1 output
    x = tr["emb"][0, q_pos].astype(np.float64)
    w = model.model.layers[0].input_layernorm.weight.data.astype(np.float64)
    by_hand = x / np.sqrt(np.mean(x * x) + cfg.rms_norm_eps) * w
    np.testing.assert_allclose(r["rmsnorm"]["out"], by_hand, rtol=1e-10)
    np.testing.assert_allclose(r["rmsnorm"]["model_out"], tr["h.0.ln_1"][0, q_pos], atol=1e-5)
    assert r["rmsnorm"]["rms"] == pytest.approx(math.sqrt(np.mean(x * x) + cfg.rms_norm_eps))
    # RoPE: pair i = dimensions (i, i + D/2), turned by position × base^(−2i/D)
    D = model.head_dim
    h, kv = D // 2, head // (model.n_head // model.n_kv_head)
    theta = cfg.rope_theta ** (-np.arange(h) * 2.0 / D)
    q_pre = tr["h.0.attn.q_pre"][0, head, q_pos].astype(np.float64)
    k_pre = tr["h.0.attn.k_pre"][0, kv, k_pos].astype(np.float64)

    def turn(v, pos):
        out = np.empty_like(v)
        for i in range(h):  # one pair at a time, as on paper
            a, b, phi = v[i], v[i + h], pos * theta[i]
            out[i], out[i + h] = a * math.cos(phi) - b * math.sin(phi), b * math.cos(phi) + a * math.sin(phi)
        return out

    rope = r["rope"]
    assert rope["kv_head"] == kv
    np.testing.assert_allclose(rope["q_angle"], q_pos * theta, rtol=1e-12)
    np.testing.assert_allclose(rope["q"], turn(q_pre, q_pos), atol=1e-12)
    np.testing.assert_allclose(rope["k"], turn(k_pre, k_pos), atol=1e-12)
    np.testing.assert_allclose(rope["q_model"], tr["h.0.attn.q"][0, head, q_pos], atol=1e-6)
    np.testing.assert_allclose(turn(q_pre, q_pos), tr["h.0.attn.q"][0, head, q_pos], atol=1e-5)  # the model turned it so
    score = lambda m, n: turn(q_pre, m) @ turn(k_pre, n) / math.sqrt(D)  # noqa: E731
    assert rope["model_score"] == pytest.approx(score(q_pos, k_pos), abs=1e-5)
    for row in rope["rows"]:
        assert row["score"] == pytest.approx(score(row["q_pos"], row["k_pos"]), abs=1e-12)
        if row["distance"] == q_pos - k_pos:  # shifted together: the same score
            assert row["score"] == pytest.approx(rope["score"], rel=1e-9, abs=1e-12)
    assert any(row["distance"] != q_pos - k_pos and abs(row["score"] - rope["score"]) > 1e-6 for row in rope["rows"])
    # GQA: query head j reads key/value head j // (H / Hkv); the cache keeps k and v of Hkv heads per layer
    H, Hkv = model.n_head, model.n_kv_head
    assert (H, Hkv) == (4, 2)
    assert r["gqa"]["groups"] == [{"kv_head": g, "query_heads": [j for j in range(H) if j * Hkv // H == g]} for g in range(Hkv)]
    assert r["gqa"]["bytes_per_token"] == 2 * model.n_layer * Hkv * D * 4
    assert r["gqa"]["bytes_per_token_mha"] == 2 * model.n_layer * H * D * 4
    # SwiGLU: silu(gate) × up of the model's gate and up
    gate, up = tr["h.0.mlp.gate"][0, q_pos].astype(np.float64), tr["h.0.mlp.up"][0, q_pos].astype(np.float64)
    np.testing.assert_allclose(r["swiglu"]["silu"], gate / (1 + np.exp(-gate)), rtol=1e-12)
    np.testing.assert_allclose(r["swiglu"]["prod"], gate / (1 + np.exp(-gate)) * up, rtol=1e-12)
    np.testing.assert_allclose(r["swiglu"]["prod_model"], tr["h.0.mlp.prod"][0, q_pos], atol=1e-6)


def test_a_snapshots_numbers_at_its_step(llama):
    """With the step slider on a snapshot, the view shows that snapshot's weights at work."""
    from scratchllm.snapshots import read_snapshot

    explorer, url = llama
    step = explorer.snapshots[0]
    assert step != explorer.snapshots[-1]
    r = Client(url).post("llama", {"text": TEXT, "layer": 1, "head": 1, "key_position": 2, "step": step})
    model = copy.deepcopy(explorer.model)
    model.load_state_dict(read_snapshot(explorer.run_dir, step))
    tr = trace(model, np.array([explorer.tokenizer.encode(TEXT)]))
    T = len(TEXT)
    np.testing.assert_allclose(r["rope"]["q_model"], tr["h.1.attn.q"][0, 1, T - 1], atol=1e-7)
    np.testing.assert_allclose(r["swiglu"]["prod_model"], tr["h.1.mlp.prod"][0, T - 1], atol=1e-7)
    latest = Client(url).post("llama", {"text": TEXT, "layer": 1, "head": 1, "key_position": 2})
    assert np.abs(np.subtract(latest["swiglu"]["prod_model"], r["swiglu"]["prod_model"])).max() > 1e-4


@pytest.mark.parametrize("body, message", [
    ({"text": TEXT, "position": 3, "key_position": 5}, "key_position"),
    ({"text": TEXT, "position": 99}, "position"),
    ({"text": TEXT, "norm": "ln_3"}, "norm"),
    ({"text": TEXT, "head": 4}, "head"),
    ({"text": TEXT, "position": 20, "shift": 20}, "shift"),
])
def test_bad_requests_get_one_line(llama, body, message):
    _, url = llama
    r = Client(url).post("llama", body, status=400)
    assert message in r["error"] and "\n" not in r["error"]


def test_a_gpt_has_no_llama_view(gpt):
    _, url = gpt
    assert Client(url).get("info")["llama"] is False
    r = Client(url).post("llama", {"text": TEXT}, status=400)
    assert "Llama-family" in r["error"]


# ---- in the browser -------------------------------------------------------------------------------------
def test_the_page_shows_the_llama_parts(llama, gpt):
    from test_explore_browser import ARGS, CHROMIUM, shot

    sync_api = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    explorer, url = llama
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("Number(document.body.dataset.renderedNext || 0) > 0", timeout=20_000)
        page.fill("#text", TEXT)
        page.wait_for_function("Number(document.body.dataset.renderedNext || 0) > 1", timeout=20_000)
        assert page.is_visible('#tabs button[data-view="llama"]')
        page.click('#tabs button[data-view="llama"]')
        page.wait_for_function("Number(document.body.dataset.renderedLlama || 0) > 0", timeout=20_000)
        page.select_option("#llama-head", "3")
        page.wait_for_function("Number(document.body.dataset.renderedLlama || 0) > 1", timeout=20_000)
        page.click("#tokens .token[data-index='8']")  # follow another token
        page.wait_for_function("Number(document.body.dataset.renderedLlama || 0) > 2", timeout=20_000)
        norm = page.eval_on_selector_all("#llama-norm-table tr[data-i]", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        rope = page.eval_on_selector_all("#llama-rope-scores tr[data-score]",
                                         "rs => rs.map(r => [Number(r.dataset.distance), Number(r.cells[3].textContent)])")
        kv = page.eval_on_selector_all("#llama-gqa-groups tr[data-kv]", "rs => rs.map(r => r.cells[1].textContent)")
        swiglu = page.evaluate("document.getElementById('llama-swiglu-chart').data.map(d => d.y)")
        shot(page, "10-llama-parts")
        # a GPT: no such tab
        page.goto(gpt[1])
        page.wait_for_function("Number(document.body.dataset.renderedNext || 0) > 0", timeout=20_000)
        gpt_tab = page.is_visible('#tabs button[data-view="llama"]')
        browser.close()
    assert not errors, errors
    assert not gpt_tab
    model = explorer.model
    tr = trace(model, np.array([explorer.tokenizer.encode(TEXT)]))
    x = tr["emb"][0, 8].astype(np.float64)
    out = tr["h.0.ln_1"][0, 8]
    assert len(norm) == 8
    for i, row in enumerate(norm):
        assert float(row[1]) == pytest.approx(x[i], abs=6e-6) and float(row[6]) == pytest.approx(out[i], abs=6e-6)
    v = rope_view(tr, model, 0, 3, 8, 0)
    assert [d for d, _ in rope] == [row["distance"] for row in v["rows"]]
    for (_, shown), row in zip(rope, v["rows"]):
        assert shown == pytest.approx(row["score"], abs=6e-7)
    assert kv == ["0, 1", "2, 3"]
    np.testing.assert_allclose(swiglu[3], tr["h.0.mlp.prod"][0, 8, :32], atol=1e-6)
    np.testing.assert_allclose(swiglu[0], tr["h.0.mlp.gate"][0, 8, :32], atol=1e-6)
