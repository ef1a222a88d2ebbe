"""The explore page over training, through its HTTP API: every view at a snapshot's step gives the
numbers of a forward pass on that snapshot's weights, loaded here independently (the safetensors file
read with the safetensors package, put into a fresh model from the checkpoint); the logit lens; the
heads and parameter changes over the snapshots; the run's learning rate from the schedule function."""
import shutil

import numpy as np
import pytest

from scratchllm import checkpoint
from scratchllm import train as T
from scratchllm.optim import cosine_with_warmup, inverse_sqrt_lr
from scratchllm.tensor import no_grad

from test_explore_http import TEXT, Client, build_gpt_run, build_translation_run, serving, trace
from test_train import tiny_config as gpt_config

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def snapshot_model(run, step):
    """The run's model with the weights of its snapshot ``step``, loaded without the code under test."""
    model = checkpoint.load(run / "ckpt")
    weights = safetensors_numpy.load_file(str(run / "snapshots" / f"step-{step:06d}.safetensors"))
    model.load_state_dict(weights)
    model.eval()
    return model


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def build_llama_run(d):
    cfg = gpt_config(d, arch="llama", n_layer=2, n_head=2, n_embd=16, block_size=32, max_iters=8, eval_interval=4)
    T.train(cfg, echo=lambda *a: None)
    return d / "run"


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    run = build_gpt_run(tmp_path_factory.mktemp("gpt"))
    with serving(run) as (explorer, url):
        yield explorer, Client(url), run


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    run = build_llama_run(tmp_path_factory.mktemp("llama"))
    with serving(run) as (explorer, url):
        yield explorer, Client(url), run


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    run = build_translation_run(tmp_path_factory.mktemp("tr"))
    with serving(run) as (explorer, url):
        yield explorer, Client(url), run


# ---- every view at a step is that snapshot's ---------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_next_token_attention_and_loss_at_a_step_are_the_snapshots(family, request):
    explorer, client, run = request.getfixturevalue(family)
    steps = client.get("info")["snapshots"]
    assert steps[0] == 0 and steps[-1] == max(steps) and len(steps) > 3
    ids = np.asarray([explorer.tokenizer.encode(TEXT)], dtype=np.int64)
    for step in (steps[1], steps[len(steps) // 2]):
        model = snapshot_model(run, step)
        with no_grad():
            p = softmax(model(ids).data[0])  # (T, V)
        r = client.post("next", {"text": TEXT, "step": step})
        assert r["step"] == step
        for c in r["candidates"]:
            assert c["p_model"] == pytest.approx(p[-1, c["id"]], abs=1e-6)
        loss = -np.log(p[np.arange(ids.shape[1] - 1), ids[0, 1:]])
        np.testing.assert_allclose(r["token_loss"], loss, atol=1e-5)
        tr = trace(model, ids)
        a = client.post("attention", {"text": TEXT, "layer": 1, "step": step})
        np.testing.assert_allclose(a["weights"], tr["h.1.attn.weights"][0], atol=1e-6)
    # the views differ from step to step (the slider shows something), and the checkpoint is untouched
    first = client.post("next", {"text": TEXT, "step": steps[0]})["candidates"][0]["p_model"]
    last = client.post("next", {"text": TEXT, "step": steps[-1]})["candidates"][0]["p_model"]
    assert first != last
    ckpt = safetensors_numpy.load_file(str(run / "ckpt" / "model.safetensors"))
    for name, p in explorer.model.state_dict().items():
        np.testing.assert_array_equal(p, ckpt[name])


def test_backward_and_block_at_a_step(gpt):
    explorer, client, run = gpt
    step = 3
    model = snapshot_model(run, step)
    ids = explorer.tokenizer.encode(TEXT)
    x, y = np.array([ids[:-1]]), np.array([ids[1:]])
    with no_grad():
        _, loss = model(x, y)
    assert client.post("backward", {"text": TEXT, "step": step})["loss"] == pytest.approx(float(loss.data), abs=1e-5)
    tr = trace(model, np.array([ids]))
    b = client.post("block", {"text": TEXT, "step": step})
    np.testing.assert_allclose(b["layers"][1]["norm_out"], np.linalg.norm(tr["h.1.resid_2"][0], axis=-1), atol=1e-3)


def test_a_step_without_a_snapshot_is_a_400(gpt):
    _, client, _ = gpt
    r = client.post("next", {"text": TEXT, "step": 7777}, status=400)
    assert "no snapshot of step 7777" in r["error"] and "\n" not in r["error"]


def test_embeddings_map_at_a_step_is_the_snapshots_pca_turned_onto_the_step_before(gpt):
    explorer, client, run = gpt
    steps = explorer.snapshots

    def pca(step):
        E = snapshot_model(run, step).token_embedding().data.astype(np.float64)
        E = E - E.mean(0)
        U, S, Vt = np.linalg.svd(E, full_matrices=False)
        return E @ Vt[:2].T

    maps = {s: np.stack([(m := client.post("embeddings", {"step": s}))["x"], m["y"]], 1) for s in steps[:4]}
    for prev, step in zip(steps[:3], steps[1:4]):
        A, B = pca(step), maps[prev]
        U, _, Vt = np.linalg.svd(A.T @ B)  # the best rotation of this step's map onto the one before
        np.testing.assert_allclose(maps[step], A @ U @ Vt, atol=2e-4)
    # the first snapshot's map is its plain PCA (up to the signs of the axes)
    np.testing.assert_allclose(np.abs(maps[steps[0]]), np.abs(pca(steps[0])), atol=2e-4)


# ---- the logit lens ------------------------------------------------------------------------------------
def test_logit_lens_first_and_last_rows(gpt):
    explorer, client, run = gpt
    ids = np.asarray([explorer.tokenizer.encode(TEXT)], dtype=np.int64)
    for step in (None, 5):
        model = explorer.model if step is None else snapshot_model(run, step)
        r = client.post("lens", {"text": TEXT, "step": step})
        with no_grad():
            p = softmax(model(ids).data[0])  # (T, V): the last row is the model's own prediction
        assert [t["id"] for t in r["top"][-1]] == list(p.argmax(-1))
        np.testing.assert_allclose(r["p_top"][-1], p.max(-1), atol=1e-6)
        # row 0 by hand: the embeddings (token + position), the final layer norm, the tied unembedding
        sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
        h = sd["transformer.wte.weight"][ids[0]] + sd["transformer.wpe.weight"][: ids.shape[1]]
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
        h = h * sd["transformer.ln_f.weight"] + sd["transformer.ln_f.bias"]
        p0 = softmax(h @ sd["lm_head.weight"].T if "lm_head.weight" in sd else h @ sd["transformer.wte.weight"].T)
        np.testing.assert_allclose(r["p_top"][0], p0.max(-1), atol=1e-5)
        assert len(r["rows"]) == explorer.model.n_layer + 1


def test_the_transformers_decoder_gets_the_lens_and_its_translation_the_slider(transformer):
    explorer, client, run = transformer
    step = explorer.snapshots[-3]
    model = snapshot_model(run, step)
    r = client.post("translate", {"text": "ka ri te lo", "beam": 1, "step": step})
    from scratchllm.translate import encode_source, greedy_decode

    src = encode_source(explorer.tokenizer, "ka ri te lo")
    out = greedy_decode(model, [src], explorer.bos_id, explorer.eos_id)[0]
    assert [t["id"] for t in r["output"]] == out + [explorer.eos_id]
    tr = trace(model, (np.array([src]), np.array([[explorer.bos_id] + out])))
    np.testing.assert_allclose(r["weights"], tr["dec.0.cross_attn.weights"][0], atol=1e-6)
    lens = client.post("lens", {"text": "ka ri te lo", "step": step})
    np.testing.assert_allclose(lens["p_top"][-1], np.asarray(tr["probs"][0], np.float64).max(-1), atol=1e-6)


# ---- over training -------------------------------------------------------------------------------------
def test_heads_over_training_by_hand(gpt):
    explorer, client, run = gpt
    r = client.get("heads")
    assert r["steps"] == explorer.snapshots
    period = r["period"]
    half = np.random.default_rng(0).integers(0, explorer.vocab_size, size=period)
    ids = np.concatenate([half, half])[None]
    for k in (0, len(r["steps"]) - 1):
        w = trace(snapshot_model(run, r["steps"][k]), ids)["h.1.attn.weights"][0].astype(np.float64)  # (H, T, T)
        T_ = w.shape[-1]
        prev = np.mean([w[:, t, t - 1] for t in range(1, T_)], axis=0)
        induction = np.mean([w[:, t, t - period + 1] for t in range(period, T_)], axis=0)
        np.testing.assert_allclose(r["scores"]["previous token"][k][1], prev, atol=1e-5)
        np.testing.assert_allclose(r["scores"]["induction"][k][1], induction, atol=1e-5)


def test_which_parameters_changed_most(gpt):
    explorer, client, run = gpt
    a, b = explorer.snapshots[1], explorer.snapshots[-1]
    r = client.post("changes", {"from": a, "to": b, "top": 100})
    A = safetensors_numpy.load_file(str(run / "snapshots" / f"step-{a:06d}.safetensors"))
    B = safetensors_numpy.load_file(str(run / "snapshots" / f"step-{b:06d}.safetensors"))
    want = {}
    for k in A:
        d = np.linalg.norm(B[k].astype(np.float64) - A[k])
        want[k] = d / max(np.linalg.norm(A[k].astype(np.float64)), np.linalg.norm(B[k].astype(np.float64)))
    assert r["n_params"] == len(A)
    for p in r["params"]:
        assert p["relative"] == pytest.approx(want[p["name"]], abs=1e-6)
    rel = [p["relative"] for p in r["params"]]
    assert rel == sorted(rel, reverse=True)


def test_a_model_without_snapshots_has_no_slider(gpt, tmp_path):
    _, _, run = gpt
    shutil.copytree(run / "ckpt", tmp_path / "imported")  # a checkpoint alone, as an imported model
    with serving(tmp_path / "imported") as (explorer, url):
        client = Client(url)
        assert client.get("info")["snapshots"] == []
        assert "no snapshots" in client.post("heads", {}, status=400)["error"]
        assert "no snapshot of step 2" in client.post("next", {"text": TEXT, "step": 2}, status=400)["error"]
        lens = client.post("lens", {"text": TEXT})  # the lens needs no snapshots
        assert len(lens["rows"]) == 3


# ---- the run's learning rate, from the schedule -------------------------------------------------------
def test_the_runs_learning_rate_is_the_schedule_at_every_step(gpt, transformer):
    _, client, run = gpt
    s = client.get("run")["schedule"]
    cfg = checkpoint.read_train_state(run / "ckpt")["train_config"]
    assert s["steps"] == list(range(cfg["max_iters"] + 1))
    want = [cosine_with_warmup(k, cfg["lr"], cfg["min_lr"], cfg["warmup_iters"], cfg["lr_decay_iters"]) for k in s["steps"]]
    np.testing.assert_allclose(s["lr"], want, rtol=1e-12)
    assert int(np.argmax(s["lr"])) == cfg["warmup_iters"] - 1  # the peak where the warmup ends
    _, client, run = transformer
    s = client.get("run")["schedule"]
    state = checkpoint.read_train_state(run / "ckpt")
    cfg, total = state["train_config"], state["step"]  # a finished run: its epochs' steps
    assert cfg["schedule"] == "linear" and s["steps"] == list(range(total + 1))
    want = [cfg["lr"] * min(1, (k + 1) / cfg["warmup_steps"]) * (1 - k / total) for k in s["steps"]]
    np.testing.assert_allclose(s["lr"], want, rtol=1e-12)


def test_the_papers_schedule_is_drawn_from_its_formula(tmp_path):
    """A translation run on the paper's 1/√step schedule: every step's rate, from the schedule function."""
    from scratchllm import translation_train as TT
    from scratchllm.explore.api import Explorer
    from test_explore_http import translation_config

    cfg = translation_config(tmp_path, epochs=2, bleu_sentences=0, schedule="inverse-sqrt", snapshots=0, average=1)
    TT.train_translation(cfg, echo=lambda *a: None)
    s = Explorer(tmp_path / "run").run({})["schedule"]
    np.testing.assert_allclose(s["lr"], [inverse_sqrt_lr(k, cfg.lr, cfg.warmup_steps) for k in s["steps"]], rtol=1e-12)
    assert s["steps"][:cfg.warmup_steps + 1] == list(range(cfg.warmup_steps + 1))
