"""The explore page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The page is read as a person sees it — the token chips, the numbers in its tables, the bars and
heatmaps it drew — and compared with the library: the trace, the sampler's distribution, an SGD step
taken here on a copy. Screenshots go to test-artifacts/explore/ (look at them to see the page).
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from scratchllm.tensor import no_grad

from test_explore_http import (TEXT, build_gpt_run, build_translation_run, loss_after_sgd_step,
                               reference_distribution, serving, trace)

CHROMIUM = os.environ.get("SCRATCHLLM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "explore"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None,
                       reason="Playwright's Python package is missing: pip install -e '.[test]' (or pip install playwright)"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (Debian/Ubuntu), "
                              "or set SCRATCHLLM_CHROMIUM to a Chromium binary"),
]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for this file, with a fresh profile; Playwright never downloads a browser."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    profile = tempfile.mkdtemp(prefix="explore-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                       viewport={"width": 1400, "height": 1000})
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    with serving(build_gpt_run(tmp_path_factory.mktemp("gpt"))) as served:
        yield served


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    with serving(build_translation_run(tmp_path_factory.mktemp("tr"))) as served:
        yield served


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors  # no JavaScript error on the page


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def rendered(page, view, after=0):
    """Wait until the page has drawn ``view`` more than ``after`` times; return the new count."""
    key = "rendered" + view[0].upper() + view[1:]
    page.wait_for_function(f"Number(document.body.dataset.{key} || 0) > {after}", timeout=20_000)
    return int(page.evaluate(f"document.body.dataset.{key}"))


def type_text(page, view, text):
    n = int(page.evaluate(f"document.body.dataset.rendered{view[0].upper() + view[1:]} || 0"))
    page.fill("#text", text)
    return rendered(page, view, n)


def open_view(page, view):
    n = int(page.evaluate(f"document.body.dataset.rendered{view[0].upper() + view[1:]} || 0"))
    page.click(f'#tabs button[data-view="{view}"]')
    return rendered(page, view, n)


def open_with(page, url, text):
    """The page opened, the text typed, the first view drawn."""
    page.goto(url)
    rendered(page, "next")
    type_text(page, "next", text)


def shown_pieces(page):
    return page.eval_on_selector_all("#tokens .token", "els => els.map(e => [e.querySelector('.piece').textContent, "
                                                        "Number(e.dataset.id)])")


def shown_distribution(page):
    """{token id: probability} as the table next to the bars shows it, and the bars' own values."""
    rows = page.eval_on_selector_all("#next-table tr[data-id]", "els => els.map(e => [Number(e.dataset.id), "
                                                                 "e.cells[5].textContent])")
    bars = page.evaluate("() => { const d = document.getElementById('next-chart').data;"
                         " return [d[1].x, d[0].x]; }")
    return {i: float(p) for i, p in rows}, bars


def test_text_tokens_and_the_temperature_slider(page, gpt):
    explorer, url = gpt
    open_with(page, url, TEXT)
    ids = explorer.tokenizer.encode(TEXT)
    assert shown_pieces(page) == [[explorer.tokenizer.decode([i]).replace(" ", "␣"), i] for i in ids]
    with no_grad():
        logits = explorer.model(np.array([ids])).data[0, -1]
    table, bars = shown_distribution(page)
    p = reference_distribution(logits, 1.0, None, None)
    shown_rows = min(20, len(logits))  # the page lists the 20 most likely tokens
    assert list(table) == list(np.argsort(-p, kind="stable")[:shown_rows])
    for i, shown in table.items():
        assert shown == pytest.approx(p[i], abs=5e-5)  # the table shows 4 decimals
    shot(page, "1-next-token")

    # the slider moves: the bars change exactly as the sampler's distribution does
    n = int(page.evaluate("document.body.dataset.renderedNext"))
    page.eval_on_selector("#temperature", "e => { e.value = '0.5'; e.dispatchEvent(new Event('input')); }")
    rendered(page, "next", n)
    table2, bars2 = shown_distribution(page)
    p2 = reference_distribution(logits, 0.5, None, None)
    assert len(table2) == shown_rows
    for i, shown in table2.items():
        assert shown == pytest.approx(p2[i], abs=5e-5)
    top = int(np.argmax(logits))
    assert table2[top] > table[top]  # a colder temperature sharpens: the favourite gains
    assert sorted(bars2[0]) == pytest.approx(sorted(p2[list(table2)]), abs=1e-6)
    assert bars2 != bars

    # top-k cuts the tail: the cut rows are struck through and get probability 0
    n = int(page.evaluate("document.body.dataset.renderedNext"))
    page.eval_on_selector("#top-k", "e => { e.value = '3'; e.dispatchEvent(new Event('input')); }")
    rendered(page, "next", n)
    table3, _ = shown_distribution(page)
    p3 = reference_distribution(logits, 0.5, 3, None)
    assert len(table3) == shown_rows
    assert {i for i, v in table3.items() if v > 0} == set(np.flatnonzero(p3 > 0))
    assert page.locator("#next-table tr.cut").count() == len(table3) - 3
    shot(page, "1-next-token-top-k")


def test_clicking_a_candidate_adds_it_to_the_text(page, gpt):
    explorer, url = gpt
    open_with(page, url, "the ca")
    first = page.locator("#next-table tr[data-id]").first
    token = int(first.get_attribute("data-id"))
    n = int(page.evaluate("document.body.dataset.renderedNext"))
    first.click()
    rendered(page, "next", n)
    assert page.input_value("#text") == "the ca" + explorer.tokenizer.decode([token])
    assert shown_pieces(page)[-1][1] == token


def test_generate_streams_text(page, gpt):
    explorer, url = gpt
    page.goto(url)
    rendered(page, "next")
    page.fill("#gen-n", "20")
    page.fill("#gen-seed", "7")
    page.click("#generate")
    rendered(page, "generate")
    shown = page.text_content("#gen-out .new")
    ids = explorer.tokenizer.encode(page.input_value("#text"))
    expected = explorer.model.generate(np.array([ids]), 20, temperature=1.0, seed=7)[0, len(ids):]
    assert shown == explorer.tokenizer.decode(expected.tolist())


def test_attention_heatmap_shows_the_traces_weights(page, gpt):
    explorer, url = gpt
    open_with(page, url, TEXT)
    n = open_view(page, "attention")
    page.select_option("#attn-layer", "1")
    rendered(page, "attention", n)
    ids = explorer.tokenizer.encode(TEXT)
    tr = trace(explorer.model, np.array([ids]))
    weights, scores = tr["h.1.attn.weights"][0], tr["h.1.attn.scores"][0]
    # hover a cell of head 1: the label shows that cell's weight and scaled score
    q, k = len(ids) - 2, 3
    box = page.locator("#attn-1 .nsewdrag").bounding_box()
    T = len(ids)
    page.mouse.move(box["x"] + (k + 0.5) * box["width"] / T, box["y"] + (q + 0.5) * box["height"] / T)
    label = page.locator(".hoverlayer .hovertext").first
    label.wait_for(timeout=5000)
    text = label.text_content()
    assert f"weight {weights[1, q, k]:.4f}" in text and f"score q·k/√D {scores[1, q, k]:.4f}" in text, text
    shot(page, "2-attention-hover")
    # click it: the softmax of that query is written out; its weights are the trace's
    page.mouse.click(box["x"] + (k + 0.5) * box["width"] / T, box["y"] + (q + 0.5) * box["height"] / T)
    page.wait_for_function(f"document.querySelector('#softmax-table') && "
                           f"document.querySelector('#attn-detail h3').textContent.includes('position {q}')")
    rows = page.eval_on_selector_all("#softmax-table tr[data-key]", "els => els.map(e => [Number(e.dataset.key), "
                                                                     "e.querySelector('.weight').textContent])")
    assert [j for j, _ in rows] == list(range(q + 1))  # only the visible keys
    for j, shown in rows:
        assert float(shown) == pytest.approx(weights[1, q, j], abs=5e-5)
    shot(page, "2-attention-softmax")


def test_block_view(page, gpt):
    explorer, url = gpt
    open_with(page, url, TEXT)
    open_view(page, "block")
    tr = trace(explorer.model, np.array([explorer.tokenizer.encode(TEXT)]))
    z = page.evaluate("document.getElementById('block-gelu').data[0].z")
    np.testing.assert_allclose(z, tr["h.0.mlp.gelu"][0], atol=1e-4)
    # the table follows one token (the last, or the one clicked) through the blocks
    page.click("#tokens .token[data-index='4']")
    page.wait_for_function("document.querySelector('#block-table h3').textContent.includes('position 4')")
    cells = page.eval_on_selector_all("#block-table tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))")
    assert len(cells) == explorer.model.config.n_layer  # a row per block, each checked
    for i, row in enumerate(cells):
        x_in = tr["emb"][0, 4] if i == 0 else tr[f"h.{i - 1}.resid_2"][0, 4]
        assert float(row[1]) == pytest.approx(np.linalg.norm(x_in), abs=5e-5)
        assert float(row[3]) == pytest.approx(x_in.std(), abs=5e-5)
        assert float(row[4]) == pytest.approx(np.linalg.norm(tr[f"h.{i}.resid_1"][0, 4]), abs=5e-5)
        assert float(row[7]) == pytest.approx(np.linalg.norm(tr[f"h.{i}.resid_2"][0, 4]), abs=5e-5)
    shot(page, "3-inside-a-block")


def test_backward_and_one_step(page, gpt):
    explorer, url = gpt
    open_with(page, url, TEXT)
    open_view(page, "backward")
    ids = explorer.tokenizer.encode(TEXT)
    x, y = np.array([ids[:-1]]), np.array([ids[1:]])
    tr = trace(explorer.model, x, targets=y)
    assert float(page.text_content("#loss-value")) == pytest.approx(tr.loss, abs=5e-5)
    shot(page, "4-backward")
    page.fill("#lr", "0.05")
    page.click("#step")
    rendered(page, "step")
    shown = float(page.text_content("#loss-after"))
    assert shown == pytest.approx(loss_after_sgd_step(explorer.model, x, y, 0.05), abs=5e-5) and shown < tr.loss
    shot(page, "4-one-step")


def test_one_step_at_the_rate_the_page_picks_and_its_curve(page, gpt):
    """The learning-rate box left empty: the server picks the rate from its curve, the step lowers the loss,
    the curve is drawn point for point; a rate typed far too large is said to overshoot."""
    explorer, url = gpt
    open_with(page, url, TEXT)
    open_view(page, "backward")
    assert page.input_value("#lr") == "" and "picks" in page.get_attribute("#lr", "placeholder")
    page.click("#step")
    n = rendered(page, "step")
    ids = explorer.tokenizer.encode(TEXT)
    x, y = np.array([ids[:-1]]), np.array([ids[1:]])
    before, after = float(page.text_content("#loss-before")), float(page.text_content("#loss-after"))
    lr = float(page.get_attribute("#step-lr", "data-lr"))
    assert page.get_attribute("#step-lr", "data-chosen") == "true"
    assert before == pytest.approx(trace(explorer.model, x, targets=y).loss, abs=5e-5)
    assert after == pytest.approx(loss_after_sgd_step(explorer.model, x, y, lr), abs=5e-5) and after < before
    assert "lowers the loss" in page.text_content("#step-verdict")
    points = explorer.step({"text": TEXT})["curve"]["points"]
    curve = page.evaluate("document.getElementById('step-curve').data")
    assert curve[0]["x"] == [p["lr"] for p in points] and len(points) > 5
    np.testing.assert_allclose(curve[0]["y"], [p["loss"] for p in points], rtol=1e-12)
    exact = float(page.get_attribute("#loss-before", "data-loss"))
    assert curve[1]["x"] == [lr] and curve[2]["y"] == [exact, exact]  # the step taken; the loss before it
    assert page.evaluate("document.getElementById('step-curve').layout.xaxis.type") == "log"
    shot(page, "4-one-step-chosen")
    page.fill("#lr", "10")
    page.click("#step")
    rendered(page, "step", n)
    assert float(page.text_content("#loss-after")) == pytest.approx(loss_after_sgd_step(explorer.model, x, y, 10.0),
                                                                    rel=1e-4)
    assert float(page.text_content("#loss-after")) > before
    assert "overshoots" in page.text_content("#step-verdict")
    assert page.get_attribute("#step-lr", "data-chosen") == "false"
    assert 10.0 in page.evaluate("document.getElementById('step-curve').data[0].x")  # the typed rate is on the curve
    shot(page, "4-one-step-overshoots")


def test_embeddings_and_the_run(page, gpt):
    explorer, url = gpt
    page.goto(url)
    rendered(page, "next")
    open_view(page, "embeddings")
    page.wait_for_function("document.querySelectorAll('#nn-table tr').length > 1")
    page.fill("#nn-token", "t")
    page.press("#nn-token", "Enter")
    page.wait_for_function("document.getElementById('nn-title').textContent.includes('\"t\"')")
    W = explorer.model.transformer.wte.weight.data.astype(np.float64)
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    t = explorer.tokenizer.encode("t")[0]
    cos = unit @ unit[t]
    cos[t] = -2
    shown = page.eval_on_selector_all("#nn-table tr", "rows => rows.slice(1).map(r => Number(r.cells[1].textContent))")
    assert shown == list(np.argsort(-cos)[:len(shown)])
    shot(page, "5-embeddings")
    open_view(page, "run")
    steps = page.evaluate("document.getElementById('run-chart').data[0].x")
    assert steps == [0, 4, 8, 12]
    shot(page, "6-run")
    # training goes on: a new line in log.jsonl appears on the open page by itself
    log = explorer.log_path()
    before = log.read_text()
    try:
        with open(log, "a") as f:
            f.write('{"step": 16, "train_loss": 2.4, "val_loss": 2.45, "lr": 0.0001}\n')
        page.wait_for_function("document.getElementById('run-chart').data[0].x.length === 5", timeout=10_000)
        assert page.evaluate("document.getElementById('run-chart').data[0].y[4]") == 2.4
    finally:
        log.write_text(before)


def test_translation_cross_attention(page, transformer):
    explorer, url = transformer
    page.goto(url)
    page.wait_for_selector('#tabs button[data-view="translate"].active')
    rendered(page, "translate")  # the example sentence, translated on opening
    assert not page.is_visible('#tabs button[data-view="attention"]')  # GPT views hidden
    page.fill("#tr-text", "ka ri te lo")
    page.select_option("#tr-beam", "4")
    page.click("#translate")
    n = rendered(page, "translate", 1)
    # the beam's candidates, as the API gives them: best first, the chosen one marked
    hs = explorer.translate({"text": "ka ri te lo", "beam": 4})["hypotheses"]
    rows = page.locator("#tr-hyps tr")
    assert rows.count() == len(hs) + 1 > 2  # a header and each hypothesis
    first = rows.nth(1).locator("td")
    assert first.nth(1).text_content() == (hs[0]["text"] or "(empty)")
    assert float(first.nth(5).text_content()) == pytest.approx(hs[0]["score"], abs=5e-4)
    assert float(first.nth(3).text_content()) == pytest.approx(hs[0]["log_prob"], abs=5e-4)
    assert first.nth(6).text_content() == "← chosen" and page.locator("#tr-hyps tr.chosen").count() == 1
    assert page.text_content("#translation") == (hs[0]["text"] or "(empty)")
    shot(page, "7-translation-beam")
    page.select_option("#tr-beam", "1")
    page.click("#translate")
    rendered(page, "translate", n)
    assert page.locator("#tr-hyps tr").count() == 0 and "Greedy" in page.text_content("#tr-hyps-note")
    from scratchllm.translate import greedy_decode, special_ids

    _, bos, eos = special_ids(explorer.tokenizer)
    src = explorer.tokenizer.encode("ka ri te lo", disallowed_special=())
    out = greedy_decode(explorer.model, [src], bos, eos)[0]
    assert page.text_content("#translation") == (explorer.tokenizer.decode(out).strip() or "(empty)")
    tr = trace(explorer.model, (np.array([src]), np.array([[bos] + out])), targets=np.array([out + [eos]]))
    z = page.evaluate("document.getElementById('cross-0').data[0].z")
    np.testing.assert_allclose(z, tr["dec.0.cross_attn.weights"][0, 0], atol=1e-6)
    shot(page, "7-translation")
    page.select_option("#tr-attn", "encoder")  # the encoder's self-attention: source × source
    rendered(page, "translate", n + 1)
    z = page.evaluate("document.getElementById('cross-1').data[0].z")
    np.testing.assert_allclose(z, tr["enc.0.self_attn.weights"][0, 1], atol=1e-6)
    log = explorer.log_path()  # a validation BLEU in the log (this small run computes none) gets its chart
    before = log.read_text()
    last = max(json.loads(line)["step"] for line in before.splitlines())
    log.write_text(before + json.dumps({"kind": "epoch", "step": last + 1, "val_loss": 1.0, "val_bleu": 12.5}) + "\n")
    try:
        open_view(page, "run")  # a translation run's log: batch losses, epoch losses, validation
        bleu = page.evaluate("document.getElementById('run-bleu').data[0]")
    finally:
        log.write_text(before)
    assert bleu["x"] == [last + 1] and bleu["y"] == [12.5]
    names = page.evaluate("document.getElementById('run-chart').data.map(d => d.name)")
    assert {"loss of recent batches", "validation loss"} <= set(names)
    lr = page.evaluate("document.getElementById('run-lr').data[0]")  # the schedule at every step, warmup whole
    assert lr["name"] == "learning rate" and lr["x"][:5] == [0, 1, 2, 3, 4] and max(lr["y"]) > 0
    shot(page, "7-translation-run")


# ---- over training: the step slider, the lens, heads, stale results, the schedule ---------------------
def move_slider(page, step, view):
    """Set the training-step slider to ``step`` as a person dragging it would (an input event); wait for ``view``."""
    key = "rendered" + view[0].upper() + view[1:]
    n = int(page.evaluate(f"document.body.dataset.{key} || 0"))
    page.evaluate("""(step) => { const s = document.getElementById('snap-slider');
                                 s.value = window.explore.steps.indexOf(step); s.dispatchEvent(new Event('input')); }""", step)
    rendered(page, view, n)


def test_the_step_slider_moves_the_distribution_and_the_heatmap_to_the_snapshots(page, gpt):
    from test_explore_snapshots import snapshot_model, softmax

    explorer, url = gpt
    open_with(page, url, TEXT)
    assert page.is_visible("#snap-slider")
    steps = page.evaluate("window.explore.steps")
    assert steps == explorer.snapshots
    ids = np.asarray([explorer.tokenizer.encode(TEXT)], dtype=np.int64)
    for step in (steps[1], steps[-4]):
        move_slider(page, step, "next")
        model = snapshot_model(explorer.run_dir, step)
        with no_grad():
            p = softmax(model(ids).data[0])
        shown, bars = shown_distribution(page)
        for i, q in shown.items():
            assert q == pytest.approx(p[-1, i], abs=6e-5)
        assert sorted(bars[0], reverse=True)[0] == pytest.approx(p[-1].max(), abs=1e-6)
        losses = page.evaluate("document.getElementById('token-loss').data[0].y")
        np.testing.assert_allclose(losses, -np.log(p[np.arange(ids.shape[1] - 1), ids[0, 1:]]), atol=1e-5)
        assert page.evaluate("document.getElementById('snap-loss').layout.shapes[0].x0") == step
    shot(page, "8-step-slider-next")
    open_view(page, "attention")
    step = steps[2]
    move_slider(page, step, "attention")
    w = trace(snapshot_model(explorer.run_dir, step), ids)["h.0.attn.weights"][0]
    for h in range(w.shape[0]):
        z = np.array(page.evaluate(f"document.getElementById('attn-{h}').data[0].z"), dtype=float)
        keep = ~np.isnan(z)
        np.testing.assert_allclose(z[keep], w[h][keep], atol=1e-6)
    shot(page, "8-step-slider-attention")


def test_lens_and_heads_over_training_are_drawn(page, gpt):
    explorer, url = gpt
    open_with(page, url, TEXT)
    open_view(page, "lens")
    cells = page.evaluate("document.getElementById('lens-chart').data[0].z")
    assert len(cells) == explorer.model.n_layer + 1
    shot(page, "9-lens")
    open_view(page, "training")
    n = page.evaluate("document.getElementById('heads-chart').data.length")
    assert n == 3 * explorer.model.n_layer * explorer.model.n_head
    assert page.evaluate("document.getElementById('chg-chart').data[0].x.length") > 0
    shot(page, "9-over-training")


def test_stale_results_are_cleared_or_marked(page, gpt, transformer):
    explorer, url = gpt
    open_with(page, url, TEXT)
    open_view(page, "backward")
    page.click("#step")
    rendered(page, "step")
    assert page.is_visible("#loss-after")
    page.fill("#target", "e")  # a new target: the step shown was for the old one
    assert not page.is_visible("#loss-after") and "changed" in page.text_content("#step-out")
    explorer, url = transformer
    page.goto(url)
    rendered(page, "translate")
    assert page.text_content("#translation")
    page.fill("#tr-text", "ka ri")  # another sentence: the old results are marked
    assert "stale" in page.get_attribute("#tr-results", "class") and "changed" in page.text_content("#tr-stale")
    page.fill("#tr-text", "")  # no sentence: the old results are gone
    assert page.locator("#translation").count() == 0 and page.locator("#tr-heads .head").count() == 0
    shot(page, "7-translation-cleared")
    page.fill("#tr-text", "ka ri te lo")
    open_view(page, "lens")  # the decoder's lens, on its translation of that sentence
    assert len(page.evaluate("document.getElementById('lens-chart').data[0].z")) == explorer.model.n_layer + 1
    shot(page, "9-lens-transformer")


def test_the_runs_learning_rate_is_the_schedule(page, gpt):
    from scratchllm import checkpoint
    from scratchllm.optim import cosine_with_warmup

    explorer, url = gpt
    page.goto(url)
    rendered(page, "next")
    open_view(page, "run")
    x = page.evaluate("document.getElementById('run-lr').data[0].x")
    y = page.evaluate("document.getElementById('run-lr').data[0].y")
    cfg = checkpoint.read_train_state(explorer.ckpt_dir)["train_config"]
    assert x == list(range(cfg["max_iters"] + 1))
    np.testing.assert_allclose(y, [cosine_with_warmup(s, cfg["lr"], cfg["min_lr"], cfg["warmup_iters"],
                                                      cfg["lr_decay_iters"]) for s in x], rtol=1e-12)
