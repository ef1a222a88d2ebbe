"""How live the explore page feels, measured in a real browser (headless Chromium driven by Playwright).

    python bench/explore_page.py                 # the default GPT's size (scratchllm train), random weights
    python bench/explore_page.py --ckpt out      # a trained checkpoint
    python bench/explore_page.py --rounds 10 --chromium /usr/bin/chromium

First page load: from navigation to the first drawing of tokens and the next-token chart (the page's
own clock: performance.now(), which starts at navigation), in a fresh browser profile (nothing cached)
and again in a new tab of the same browser (plotly.js cached). Then, for each view, the time from
the text box's input event to the view drawn (the page waits 80 ms after the last keystroke before
asking, and that wait is included). The weights do not change any of these times, so a randomly
initialised model of the default size is as good as a trained one.

The step slider: the default model is given 20 snapshots (at the steps ``scratchllm train`` would keep
over 2000 steps, each a differently seeded model) and a log.jsonl; for each view, the time from the
slider's input event to the view redrawn at that step, moving to a step not seen before (the server
reads that snapshot's file into a copy of the model) and back to one seen a moment ago (kept copy).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TEXTS = ["The quick brown fox jumps over the lazy dog, and then it runs far away.",
         "A small model reads this sentence one token at a time and guesses the next.",
         "To be or not to be, that is the question: whether 'tis nobler in the mind to suffer"]


def default_gpt(d: Path) -> Path:
    """A GPT of the default size (scratchllm train: 4 layers, width 128, 64 tokens) with a character
    tokenizer of the built-in corpus, saved as a checkpoint."""
    import scratchllm as sl
    from scratchllm.data.corpus import builtin_text
    from scratchllm.models import GPT, GPTConfig
    from scratchllm.tokenizers import CharTokenizer
    from scratchllm.train import TrainConfig

    cfg = TrainConfig()
    tok = CharTokenizer().train(builtin_text(), vocab_size=10_000)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd), seed=0)
    sl.save(model, d / "ckpt", tokenizer=tok)
    return d / "ckpt"


def add_snapshots(d: Path, n: int = 20, total: int = 2000):
    """Snapshots and a log.jsonl beside ``d / "ckpt"``, as a run of ``total`` steps would leave them."""
    import json

    from scratchllm import checkpoint
    from scratchllm.models import GPT
    from scratchllm.snapshots import snapshot_steps, write_snapshot

    model = checkpoint.load(d / "ckpt")
    steps = snapshot_steps(total, n)
    for k, step in enumerate(steps):
        write_snapshot(d, step, GPT(model.config, seed=k + 1))
    with open(d / "log.jsonl", "w") as f:
        for step in range(0, total + 1, 250):
            f.write(json.dumps({"step": step, "train_loss": 4.2 - step / 1000, "val_loss": 4.25 - step / 1000}) + "\n")
    return steps


def slider_rows(page, steps, rounds):
    """Slider moved -> each view redrawn at that step: to a step not seen before, and back to the one before."""
    if len(steps) < 3:
        return []
    rows = []
    page.fill("#text", TEXTS[0][:60])
    todo = [s for s in steps[::-1]]  # from the last step (already shown) backwards: each one new to the server
    for view in ("next", "attention", "lens", "embeddings"):
        key = "rendered" + view[0].upper() + view[1:]
        n = int(page.evaluate(f"document.body.dataset.{key} || 0"))
        page.click(f'#tabs button[data-view="{view}"]')
        page.wait_for_function(f"Number(document.body.dataset.{key} || 0) > {n}", timeout=60_000)
        new, seen, fetches = [], [], []
        for r in range(rounds):
            for kind, step in (("new", todo[(r + 1) % len(todo)]), ("seen", todo[r % len(todo)])):
                n = int(page.evaluate(f"document.body.dataset.{key} || 0"))
                page.evaluate("window.explore.timings = []")
                page.evaluate("(step) => { const s = document.getElementById('snap-slider');"
                              " s.value = window.explore.steps.indexOf(step); s.dispatchEvent(new Event('input')); }", step)
                page.wait_for_function(f"Number(document.body.dataset.{key} || 0) > {n}", timeout=60_000)
                ms = page.evaluate(f"window.explore.timings.filter(t => t.view === '{view}').pop().ms")
                (new if kind == "new" else seen).append(ms)
                if kind == "new":
                    api = "next" if view == "next" else view
                    fetches.append(page.evaluate(f"performance.getEntriesByType('resource')"
                                                 f".filter(e => e.name.endsWith('/api/{api}')).pop().duration"))
        todo = todo[rounds + 1:] + todo[:rounds + 1]  # the next view starts on steps whose copies are gone
        rows.append((f"slider -> {view} redrawn, new step (median of {len(new)}, max {max(new):.0f})",
                     statistics.median(new), None))
        rows.append((f"   of which the request /api/{view} (server + transfer)", statistics.median(fetches), None))
        rows.append((f"slider -> {view} redrawn, step just seen (median of {len(seen)})", statistics.median(seen), None))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint or run directory (default: a default-size GPT, random weights)")
    ap.add_argument("--rounds", type=int, default=6, help="texts typed per view (default: 6)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from scratchllm.explore import Explorer, serve_in_thread

    work = Path(tempfile.mkdtemp(prefix="explore-bench-"))
    ckpt = args.ckpt or default_gpt(work)
    if not args.ckpt:
        add_snapshots(work)
        ckpt = work
    explorer = Explorer(ckpt)
    server, url = serve_in_thread(explorer)
    info = explorer.info()
    print(f"model: {info['kind']}, {info['layers']} layers, {info['heads']} heads, width {info['config'].get('n_embd')}, "
          f"{info['vocab_size']} tokens, context {info['context']}, {info['parameters']:,} parameters")

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    rows = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(work / "profile"), executable_path=args.chromium, headless=True, viewport={"width": 1400, "height": 1000},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        loads = []
        for i in range(4):
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_function("document.body.dataset.renderedNext", timeout=30_000)
            wall = time.perf_counter() - t0
            ms = page.evaluate("performance.now()")
            loads.append((ms, wall * 1000, float(page.evaluate("document.body.dataset.firstNumbers"))))
            if i < 3:
                page.close()
        rows.append(("first page load, fresh profile: tokens and table shown", loads[0][2], None))
        rows.append(("first page load, fresh profile: the chart drawn too", loads[0][0], loads[0][1]))
        warm = [x[0] for x in loads[1:]]
        rows.append((f"page load, new tab (median of {len(warm)})", statistics.median(warm),
                     statistics.median(x[1] for x in loads[1:])))

        for view in ("next", "attention", "block", "backward"):
            key = "rendered" + view[0].upper() + view[1:]
            if view != "next":
                n = int(page.evaluate(f"document.body.dataset.{key} || 0"))
                page.click(f'#tabs button[data-view="{view}"]')
                page.wait_for_function(f"Number(document.body.dataset.{key} || 0) > {n}", timeout=30_000)
            times, fetches = [], []
            for r in range(args.rounds):
                text = TEXTS[r % len(TEXTS)][: min(60, 30 + 5 * r)]  # within the 64-token context
                n = int(page.evaluate(f"document.body.dataset.{key} || 0"))
                page.evaluate("window.explore.timings = []")
                page.fill("#text", text)
                try:
                    page.wait_for_function(f"Number(document.body.dataset.{key} || 0) > {n}", timeout=30_000)
                except Exception:
                    sys.exit(f"{view}: {text!r} was not drawn; the page says: {page.text_content('#text-error')}")
                times.append(page.evaluate(f"window.explore.timings.filter(t => t.view === '{view}').pop().ms"))
                fetches.append(page.evaluate(f"performance.getEntriesByType('resource')"
                                             f".filter(e => e.name.endsWith('/api/{view}')).pop().duration"))
            rows.append((f"text -> {view} drawn (median of {len(times)}, max {max(times):.0f} ms)",
                         statistics.median(times), None))
            rows.append((f"   of which the request /api/{view} (server + transfer)", statistics.median(fetches), None))
        rows += slider_rows(page, info["snapshots"], args.rounds)
        ctx.close()
    server.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'what':<58} {'page clock ms':>14} {'wall ms':>9}")
    for what, ms, wall in rows:
        print(f"{what:<58} {ms:>14.0f} {'' if wall is None else f'{wall:.0f}':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
