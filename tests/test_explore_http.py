"""The explore server over HTTP on an ephemeral port: its numbers are the model's and the trace's,
bad requests get 400, no path leaves its own files, requests in parallel give the numbers of requests
one after the other, and the CLI starts, warns and stops cleanly."""
import contextlib
import copy
import http.client
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import train as T
from scratchllm import translation_train as TT
from scratchllm.explore import Explorer, serve_in_thread
from scratchllm.tensor import no_grad

from test_train import tiny_config as gpt_config
from test_translation_train import tiny_config as translation_config

TEXT = "the cat sat on the mat"


def trace(model, ids, targets=None):
    from scratchllm.explain import trace as trace_

    return trace_(model, ids, targets=targets)


# ---- checkpoints and servers, built once for this file -------------------------------------------
_RUNS = {}  # the runs below, built once per test session and shared with test_explore_browser.py


def build_gpt_run(d):
    """A small character-level GPT trained a few steps: a run directory with ckpt/ and log.jsonl."""
    if "gpt" not in _RUNS:
        cfg = gpt_config(d, n_layer=2, n_head=2, n_embd=16, block_size=32, max_iters=12, eval_interval=4)
        T.train(cfg, echo=lambda *a: None)
        _RUNS["gpt"] = d / "run"
    return _RUNS["gpt"]


def build_translation_run(d):
    """A small Transformer that has learned some of the made-up language of test_translation_train."""
    if "transformer" not in _RUNS:
        # average=1: model/ holds the last weights, the same as the last snapshot the page's slider starts on
        TT.train_translation(translation_config(d, epochs=12, bleu_sentences=0, average=1), echo=lambda *a: None)
        _RUNS["transformer"] = d / "run"
    return _RUNS["transformer"]


class Client:
    def __init__(self, url):
        self.host, self.port = url.split("//")[1].rstrip("/").split(":")
        self.url = url

    def request(self, method, path, body=None, raw=None, headers=None):
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        out = res.status, res.getheader("Content-Type"), res.read()
        conn.close()
        return out

    def post(self, name, body, status=200):
        code, _, data = self.request("POST", "/api/" + name, body)
        assert code == status, data
        if name == "generate":  # newline-delimited JSON, one line per token
            return [json.loads(line) for line in data.decode().splitlines()]
        return json.loads(data)

    def get(self, name):
        code, _, data = self.request("GET", "/api/" + name)
        assert code == 200, data
        return json.loads(data)


@contextlib.contextmanager
def serving(path):
    """(explorer, url) of a server over ``path`` on an ephemeral port, for the duration of the block."""
    explorer = Explorer(path)
    server, url = serve_in_thread(explorer)
    try:
        yield explorer, url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    run = build_gpt_run(tmp_path_factory.mktemp("gpt"))
    with serving(run) as (explorer, url):
        yield explorer, Client(url), run


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    run = build_translation_run(tmp_path_factory.mktemp("tr"))
    with serving(run) as (explorer, url):
        yield explorer, Client(url), run


def loss_after_sgd_step(model, x, y, lr):
    """The library's own step, taken here on a copy: optim.SGD after a backward of the model's loss."""
    model = copy.deepcopy(model)
    opt = sl.optim.SGD(model.parameters(), lr=lr)
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    with no_grad():
        _, after = model(x, y)
    return float(after.data)


def ids_of(explorer, text):
    return np.asarray([explorer.tokenizer.encode(text)], dtype=np.int64)


# ---- the numbers --------------------------------------------------------------------------------
def test_info_and_the_page(gpt):
    explorer, client, run = gpt
    info = client.get("info")
    assert info["kind"] == "gpt" and info["layers"] == 2 and info["heads"] == 2 and info["has_run"]
    code, kind, page = client.request("GET", "/")
    assert code == 200 and kind.startswith("text/html") and b"/static/app.js" in page
    for name in ("app.js", "style.css", "index.html"):
        code, _, body = client.request("GET", "/static/" + name)
        assert code == 200 and body == (resources.files("scratchllm.explore") / "static" / name).read_bytes()
    import plotly

    code, kind, js = client.request("GET", "/static/plotly.min.js")
    shipped = (resources.files(plotly) / "package_data" / "plotly.min.js").read_bytes()
    assert code == 200 and "javascript" in kind and js == shipped


def test_tokens_are_the_tokenizers(gpt):
    explorer, client, _ = gpt
    r = client.post("tokens", {"text": TEXT})
    assert [t["id"] for t in r["tokens"]] == explorer.tokenizer.encode(TEXT)
    assert "".join(t["piece"] for t in r["tokens"]) == TEXT


def reference_distribution(logits, temperature, top_k, top_p):
    """The next-token distribution written out independently: softmax(z/T), the k largest, the nucleus."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, dtype=bool)
    if top_k:
        keep &= z >= np.sort(z)[-top_k]
    p = np.exp(z - z.max()) * keep
    p /= p.sum()
    if top_p:
        order = np.argsort(-p, kind="stable")
        mass_before = np.concatenate([[0], np.cumsum(p[order])[:-1]])
        nucleus = np.zeros_like(keep)
        nucleus[order[mass_before < top_p]] = True
        p = p * nucleus
        p /= p.sum()
    return p


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.5, 3, None), (1.5, None, 0.6),
                                                     (0.8, 5, 0.5)])
def test_next_token_distribution_is_the_samplers(gpt, temperature, top_k, top_p):
    explorer, client, _ = gpt
    r = client.post("next", {"text": TEXT, "temperature": temperature, "top_k": top_k, "top_p": top_p})
    with no_grad():
        logits = explorer.model(ids_of(explorer, TEXT)).data[0, -1]
    p = reference_distribution(logits, temperature, top_k, top_p)
    assert r["kept"] == int((p > 0).sum())
    # the 20 most likely at this temperature, each checked below
    assert len(r["candidates"]) == min(20, len(logits))
    for c in r["candidates"]:
        assert c["p"] == pytest.approx(p[c["id"]], abs=1e-7)
        assert c["kept"] == (p[c["id"]] > 0)
        assert c["logit"] == pytest.approx(float(logits[c["id"]]), abs=1e-5)
    shown = [c["p_temperature"] for c in r["candidates"]]
    assert shown == sorted(shown, reverse=True)  # most likely first


def test_generate_streams_the_samplers_tokens(gpt):
    explorer, client, _ = gpt
    code, kind, data = client.request("POST", "/api/generate", {"text": "the ", "max_new_tokens": 12, "seed": 3,
                                                                "temperature": 0.9, "top_k": 5})
    lines = [json.loads(x) for x in data.decode().splitlines()]
    assert code == 200 and kind == "application/x-ndjson" and lines[-1] == {"done": True}
    expected = explorer.model.generate(ids_of(explorer, "the "), 12, temperature=0.9, top_k=5, seed=3)[0, 4:]
    assert [x["id"] for x in lines[:-1]] == expected.tolist()


def test_attention_is_the_traces(gpt):
    explorer, client, _ = gpt
    tr = trace(explorer.model, ids_of(explorer, TEXT))
    for layer in range(2):
        r = client.post("attention", {"text": TEXT, "layer": layer})
        w = np.array(r["weights"], dtype=np.float64)
        np.testing.assert_allclose(w, tr[f"h.{layer}.attn.weights"][0], atol=1e-6)
        s = np.array([[[np.nan if v is None else v for v in row] for row in head] for head in r["scores"]])
        ref = tr[f"h.{layer}.attn.scores"][0]
        assert np.array_equal(np.isnan(s), ~np.isfinite(ref))  # the masked entries, above the diagonal
        np.testing.assert_allclose(s[~np.isnan(s)], ref[np.isfinite(ref)], atol=1e-5)
        np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)


def test_block_is_the_traces(gpt):
    explorer, client, _ = gpt
    tr = trace(explorer.model, ids_of(explorer, TEXT))
    r = client.post("block", {"text": TEXT, "layer": 1})
    np.testing.assert_allclose(r["gelu"], tr["h.1.mlp.gelu"][0], atol=1e-4)
    resid_1 = tr["h.1.resid_1"][0]
    np.testing.assert_allclose(r["layers"][1]["norm_mid"], np.linalg.norm(resid_1, axis=-1), atol=1e-3)
    np.testing.assert_allclose(r["layers"][1]["ln_2_std"], resid_1.std(-1), atol=1e-4)
    np.testing.assert_allclose(r["layers"][1]["ln_1_mean"], tr["h.0.resid_2"][0].mean(-1), atol=1e-4)


@pytest.mark.parametrize("target", [None, "e"])
def test_backward_is_the_traces(gpt, target):
    explorer, client, _ = gpt
    ids = explorer.tokenizer.encode(TEXT)
    if target is None:
        x, y = np.array([ids[:-1]]), np.array([ids[1:]])
    else:
        x, y = np.array([ids]), np.array([[-100] * (len(ids) - 1) + explorer.tokenizer.encode(target)])
    tr = trace(explorer.model, x, targets=y)
    r = client.post("backward", {"text": TEXT, "layer": 1, "target": target})
    assert r["loss"] == pytest.approx(tr.loss, rel=1e-6)
    # the loss is the model's own: −log p of the right next tokens, from a plain forward
    with no_grad():
        logits = explorer.model(x).data[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    rows = np.flatnonzero(y[0] >= 0)
    assert r["loss"] == pytest.approx(-logp[rows, y[0, rows]].mean(), rel=1e-5)
    for i in range(2):
        np.testing.assert_allclose(r["grad_stream"][i], np.linalg.norm(tr.grad(f"h.{i}.resid_2")[0], axis=-1),
                                   rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(r["grad_attn_weights"], tr.grad("h.1.attn.weights")[0], atol=1e-7)
    norms = {n: np.linalg.norm(tr.grad(n)) for n, _ in explorer.model.named_parameters()}
    assert [p["name"] for p in r["params"][:3]] == sorted(norms, key=lambda n: -norms[n])[:3]


def test_one_step_is_sgds_on_a_copy(gpt):
    explorer, client, run = gpt
    before = {k: v.copy() for k, v in explorer.model.state_dict().items()}
    weights_file = (run / "ckpt" / "model.safetensors").read_bytes()
    r = client.post("step", {"text": TEXT, "lr": 0.05})
    ids = explorer.tokenizer.encode(TEXT)
    x, y = np.array([ids[:-1]]), np.array([ids[1:]])
    assert r["loss_after"] == pytest.approx(loss_after_sgd_step(explorer.model, x, y, 0.05), rel=1e-6)
    assert r["loss_after"] < r["loss_before"]
    # nothing changed: not the served model, not the checkpoint on disk
    for k, v in explorer.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert (run / "ckpt" / "model.safetensors").read_bytes() == weights_file


def test_embeddings_and_neighbours(gpt):
    explorer, client, _ = gpt
    r = client.post("embeddings", {})
    W = explorer.model.transformer.wte.weight.data.astype(np.float64)
    X = W - W.mean(0)
    _, _, vt = np.linalg.svd(X, full_matrices=False)  # PCA by SVD, independent of the server's eigh
    for k, coords in enumerate((r["x"], r["y"])):
        ref = X @ vt[k]
        sign = np.sign(ref @ np.asarray(coords))  # a principal direction's sign is arbitrary
        np.testing.assert_allclose(coords, sign * ref, atol=1e-4)
    n = client.post("neighbours", {"id": 3, "k": 4})
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = unit @ unit[3]
    cos[3] = -2
    assert [x["id"] for x in n["neighbours"]] == list(np.argsort(-cos)[:4])


def test_the_run_follows_log_jsonl(gpt):
    explorer, client, run = gpt
    lines = (run / "log.jsonl").read_text().splitlines()
    r = client.get("run")
    assert r["records"] == [json.loads(x) for x in lines] and len(lines) >= 3
    with open(run / "log.jsonl", "a") as f:  # training writes another line, and half of the next
        f.write(json.dumps({"step": 99, "train_loss": 1.5, "val_loss": 1.6, "lr": 1e-4}) + "\n{\"step\": 1")
    try:
        r = client.get("run")
        assert r["records"][-1] == {"step": 99, "train_loss": 1.5, "val_loss": 1.6, "lr": 1e-4}
        assert len(r["records"]) == len(lines) + 1
    finally:
        (run / "log.jsonl").write_text("".join(x + "\n" for x in lines))


def test_translation_and_its_cross_attention(transformer):
    from scratchllm.translate import beam_search, greedy_decode, special_ids

    explorer, client, _ = transformer
    assert client.get("info")["kind"] == "transformer"
    sentence = "ka ri te lo"
    _, bos, eos = special_ids(explorer.tokenizer)
    src = explorer.tokenizer.encode(sentence, disallowed_special=())
    traces = {}
    for beam in (1, 3):
        r = client.post("translate", {"text": sentence, "beam": beam, "layer": 0})
        out = greedy_decode(explorer.model, [src], bos, eos)[0] if beam == 1 else \
            beam_search(explorer.model, [src], bos, eos, beam_size=beam)[0]
        assert [t["id"] for t in r["output"]] == out + [eos]
        assert r["translation"] == explorer.tokenizer.decode(out).strip()
        tr = trace(explorer.model, (np.array([src]), np.array([[bos] + out])), targets=np.array([out + [eos]]))
        np.testing.assert_allclose(r["weights"], tr["dec.0.cross_attn.weights"][0], atol=1e-6)
        assert np.array(r["weights"]).shape == (2, len(out) + 1, len(src))
        traces[beam] = tr
    for which, name in (("encoder", "enc.0.self_attn.weights"), ("decoder", "dec.0.self_attn.weights")):
        r = client.post("translate", {"text": sentence, "attention": which, "beam": 1})
        np.testing.assert_allclose(r["weights"], traces[1][name][0], atol=1e-6)
    assert "attention" in client.post("translate", {"text": sentence, "attention": "sideways"}, status=400)["error"]
    assert "layer" in client.post("translate", {"text": sentence, "layer": 1}, status=400)["error"]
    # a GPT view on a Transformer, and translation on a GPT, are 400s with a message
    assert "GPT" in client.post("next", {"text": "ka"}, status=400)["error"]


def test_the_beams_candidates_and_their_scores(transformer):
    """Each finished hypothesis the beam kept, re-scored here by one teacher-forced pass: its summed
    log-probability and its score under the length penalty ((5 + n) / 6)^0.6, n counting EOS."""
    from scratchllm.translate import beam_search, special_ids

    explorer, client, _ = transformer
    _, bos, eos = special_ids(explorer.tokenizer)
    assert client.post("translate", {"text": "ka ri", "beam": 1})["hypotheses"] == []  # greedy keeps no beam
    seen = 0
    for sentence in ("ka ri te lo", "lo te", "ri ri ka"):
        src = explorer.tokenizer.encode(sentence, disallowed_special=())
        r = client.post("translate", {"text": sentence, "beam": 4})
        hs = r["hypotheses"]
        assert hs[0]["ids"] == beam_search(explorer.model, [src], bos, eos, beam_size=4)[0]
        assert hs[0]["text"] == r["translation"] and hs[0]["score"] == r["score"]
        assert [h["chosen"] for h in hs] == [True] + [False] * (len(hs) - 1)
        assert [h["score"] for h in hs] == sorted((h["score"] for h in hs), reverse=True)
        assert len({tuple(h["ids"]) for h in hs}) == len(hs)
        for h in hs:
            tgt_out = h["ids"] + [eos]
            with no_grad():
                logits = explorer.model(np.array([src]), np.array([[bos] + h["ids"]])).data[0].astype(np.float64)
            logp = logits - logits.max(axis=-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
            total = logp[np.arange(len(tgt_out)), tgt_out].sum()
            assert h["length"] == len(tgt_out)
            assert h["text"] == explorer.tokenizer.decode(h["ids"]).strip()
            assert h["log_prob"] == pytest.approx(total, abs=2e-4)
            assert h["penalty"] == pytest.approx(((5 + len(tgt_out)) / 6) ** 0.6, abs=1e-6)
            assert h["score"] == pytest.approx(total / ((5 + len(tgt_out)) / 6) ** 0.6, abs=2e-4)
        seen += len(hs)
    assert seen > 3  # some sentence had more than one candidate


# ---- safety --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/../pyproject.toml", "/static/../api.py", "/static/%2e%2e/api.py",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/static/..%2fserver.py", "//etc/passwd",
                                  "/etc/passwd", "/static//etc/passwd", "/static/", "/api/../static/app.js",
                                  "/static/app.js/..", "http://example.com/etc/passwd", "/static/APP.JS",
                                  "/api/nothing", "/static/__init__.py"])
def test_no_path_leaves_the_pages_files(gpt, path):
    _, client, _ = gpt
    code, _, body = client.request("GET", path)
    assert code == 404 and b"root:" not in body and b"import" not in body


@pytest.mark.parametrize("name,body,message", [
    ("next", {"text": "x" * 5000}, "characters long"),
    ("next", {"text": "the cat " * 10}, "tokens long"),
    ("next", {"text": ""}, "empty"),
    ("next", {"text": 5}, "must be a string"),
    ("next", {}, "must be a string"),
    ("next", {"text": "the", "temperature": "hot"}, "temperature"),
    ("next", {"text": "the", "temperature": -1}, "temperature"),
    ("next", {"text": "the", "temperature": 1e999}, "temperature"),
    ("next", {"text": "the", "top_k": 2.5}, "top_k"),
    ("next", {"text": "the", "top_k": 0}, "top_k"),
    ("next", {"text": "the", "top_p": 1.5}, "top_p"),
    ("next", {"text": "the", "top_p": [0.5]}, "top_p"),
    ("next", {"text": "the ∑ cat"}, "not in this tokenizer"),
    ("attention", {"text": "the", "layer": 7}, "layer"),
    ("backward", {"text": "the", "target": "tt"}, "one token"),
    ("backward", {"text": "t"}, "one token"),
    ("step", {"text": "the cat", "lr": "fast"}, "lr"),
    ("neighbours", {"id": 10 ** 9}, "id"),
    ("translate", {"text": "ka"}, "Transformer"),
    ("generate", {"text": "the", "max_new_tokens": 10 ** 6}, "max_new_tokens"),
])
def test_bad_requests_get_400_and_a_short_message(gpt, name, body, message):
    _, client, _ = gpt
    code, kind, data = client.request("POST", "/api/" + name, body)
    err = json.loads(data)["error"]
    assert code == 400 and kind == "application/json" and message in err, err
    assert "Traceback" not in err and "\n" not in err and len(err) < 300
    assert client.post("tokens", {"text": "the"})["tokens"]  # still serving


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"', b"null", b"{\"text\": NaN"])
def test_malformed_bodies_get_400(gpt, raw):
    _, client, _ = gpt
    code, _, data = client.request("POST", "/api/next", raw=raw)
    assert code == 400 and "JSON" in json.loads(data)["error"]
    code, _, _ = client.request("POST", "/api/next", raw=b"x" * 100_000)
    assert code == 400
    code, _, _ = client.request("POST", "/api/next", raw=b"{}", headers={"Content-Length": "-5"})
    assert code == 400
    assert client.post("tokens", {"text": "the"})["tokens"]


def test_parallel_requests_give_the_numbers_of_sequential_ones(gpt):
    _, client, _ = gpt
    texts = ["the cat sat", "the dog sat on the log", "on the mat", "the log"]
    jobs = [(name, {"text": t, "layer": 1}) for t in texts for name in ("attention", "backward", "next", "block")]
    jobs += [("step", {"text": t, "lr": 0.3}) for t in texts]
    jobs += [("generate", {"text": t, "max_new_tokens": 20, "seed": 5, "temperature": 1.2}) for t in texts]
    sequential = [client.post(name, body) for name, body in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda job: client.post(*job), jobs * 2))
        assert parallel == sequential * 2


# ---- the command line --------------------------------------------------------------------------------
def start_cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "explore", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    return proc, line


def test_cli_serves_and_stops_cleanly_on_ctrl_c(gpt):
    _, _, run = gpt
    proc, line = start_cli("--ckpt", run, "--port", "0")
    try:
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("open ")[1].split()[0]
        assert Client(url).post("tokens", {"text": "the"})["tokens"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in err


def test_cli_warns_when_not_on_loopback(gpt):
    _, _, run = gpt
    proc, line = start_cli("--ckpt", run, "--port", "0", "--host", "0.0.0.0")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert "warning: listening on 0.0.0.0" in err and proc.returncode == 0


@pytest.mark.parametrize("args,message", [(["--port", "http"], "--port must be an integer"),
                                          (["--port", "70000"], "--port must be at most 65535"),
                                          (["--port", "-1"], "--port must be at least 0"),
                                          (["--ckpt", "/nonexistent/run"], "does not exist")])
def test_cli_mistakes_are_one_line(gpt, args, message, capsys):
    from scratchllm.cli import main

    _, _, run = gpt
    code = main(["explore", "--ckpt", str(run), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_help(capsys):
    from scratchllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["explore", "--help"])
    assert e.value.code == 0 and "--ckpt" in capsys.readouterr().out


def test_byte_level_pieces(tmp_path):
    """A byte-level BPE model: pieces are the tokens' bytes; part of a UTF-8 character shows as \\x.."""
    from scratchllm.models import GPT, GPTConfig
    from scratchllm.tokenizers import BPETokenizer

    tok = BPETokenizer().train("the cat sat on the mat. " * 20, vocab_size=266)
    sl.save(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8)),
            tmp_path / "ckpt", tokenizer=tok)
    with serving(tmp_path / "ckpt") as (_, url):
        text = "the mat é😀"
        r = Client(url).post("tokens", {"text": text})
        assert [t["id"] for t in r["tokens"]] == tok.encode(text)
        assert [t["piece"] for t in r["tokens"]][-4:] == ["\\xf0", "\\x9f", "\\x98", "\\x80"]  # 😀, byte by byte
        shown = "".join(t["piece"] for t in r["tokens"])
        assert shown.startswith("the mat ") and "\\xc3\\xa9" in shown  # é: two bytes, each its own token
