"""Sampling speed: tokens/s with the KV cache vs without, ours vs PyTorch.

    python bench/generate.py [--tokens 500] [--rounds 3] [--threads 2]

Batch 1, a one-token prompt, ``--tokens`` new tokens sampled at temperature 1.
Two configs (vocabulary 65, n_layer 4, n_head 4, n_embd 128, float32):

* block 64, the benchmark GPT: past 64 tokens the window slides, and an exact
  continuation recomputes the whole window each step (see
  ``scratchllm/generate.py``), so the cache only speeds up the first 64 tokens;
* block 64 with 63 new tokens: the same model while everything fits;
* block 512: all tokens fit, the cache pays off fully.

References, same weights, same process, interleaved round by round (median):
``tests/torch_gpt.py``'s TorchGPT (no cache) and Hugging Face
``GPT2LMHeadModel`` with ``use_cache=True`` (``past_key_values``) and without,
driven by the same loop (cache while the window has room, then full windows).
``speed-up`` is against the same library's run without the cache.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# bench/tokenizers.py would shadow the `tokenizers` package transformers imports:
# take bench/ off the path and load the shared helpers by file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "tests"))
_spec = importlib.util.spec_from_file_location("bench_common", HERE / "common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
header, interleaved, table, use_torch_threads = _common.header, _common.interleaved, _common.table, _common.use_torch_threads
OtherLoad = _common.OtherLoad

from scratchllm.generate import generate  # noqa: E402
from scratchllm.models.gpt import GPT, GPTConfig  # noqa: E402

BENCH_GPT = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
BLOCK_512 = GPTConfig(vocab_size=65, block_size=512, n_layer=4, n_head=4, n_embd=128)
CASES = [  # (title, config, new tokens: None = --tokens)
    ("block 64 (benchmark GPT)", BENCH_GPT, None),
    ("block 64, within the window (never slides)", BENCH_GPT, 63),
    ("block 512", BLOCK_512, None),
]


def hf_gpt2(model, torch):
    """An HF GPT2LMHeadModel holding a copy of ``model``'s weights (Conv1D stores (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=c.layer_norm_eps, use_cache=True,
                        bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    theirs = hf.state_dict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            a = np.asarray(p.data)
            if name.endswith("weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc")):
                a = a.T  # Conv1D: (in, out)
            theirs[name].copy_(torch.from_numpy(np.ascontiguousarray(a)))
    hf.tie_weights()
    return hf


def torch_generate(torch, forward, ids, n, block, cached, seed, greedy=False):
    """The same loop as ours in torch: prefill, one token per step through
    ``past_key_values`` while the window has room, then the whole window."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.as_tensor(ids)
    with torch.inference_mode():
        logits, past = forward(seq[:, -block:], None, cached)
        for step in range(n):
            if greedy:
                tok = logits.argmax(-1, keepdim=True)
            else:
                tok = torch.multinomial(torch.softmax(logits.double(), -1), 1, generator=g)  # (B, 1)
            seq = torch.cat([seq, tok], dim=1)
            if step == n - 1:
                break
            if past is not None and past.get_seq_length() < block:
                logits, past = forward(tok, past, True)
            else:
                logits, past = forward(seq[:, -block:], None, False)
    return seq


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    args = ap.parse_args(argv)

    torch = use_torch_threads(args.threads)
    from torch_gpt import TorchGPT

    print(header(torch))
    print(f"batch 1, prompt 1 token, {args.tokens} new tokens (unless said), temperature 1; "
          f"median of {args.rounds} rounds\n")
    prompt = np.zeros((1, 1), dtype=np.int64)
    for title, cfg, n in CASES:
        n = n or args.tokens
        model = GPT(cfg, seed=0)
        ref = TorchGPT.from_scratch(model).eval()
        hf = hf_gpt2(model, torch)
        block = cfg.block_size

        def hf_forward(ids, past, cached):
            out = hf(ids, past_key_values=past, use_cache=cached)
            return out.logits[:, -1], (out.past_key_values if cached else None)

        def ref_forward(ids, past, cached):
            return ref(ids)[:, -1], None

        # the same weights give the same greedy tokens everywhere
        ours_g = generate(model, prompt, 80, temperature=0)
        same = all(np.array_equal(ours_g, torch_generate(torch, f, prompt, 80, block, c, 0, greedy=True).numpy())
                   for f, c in ((hf_forward, True), (hf_forward, False), (ref_forward, False)))

        fns = {
            "ours, KV cache": lambda: generate(model, prompt, n, seed=0, use_cache=True),
            "ours, no cache": lambda: generate(model, prompt, n, seed=0, use_cache=False),
            "HF GPT-2, KV cache": lambda: torch_generate(torch, hf_forward, prompt, n, block, True, 0),
            "HF GPT-2, no cache": lambda: torch_generate(torch, hf_forward, prompt, n, block, False, 0),
            "TorchGPT, no cache": lambda: torch_generate(torch, ref_forward, prompt, n, block, False, 0),
        }
        with OtherLoad() as load:
            t = interleaved(fns, rounds=args.rounds, number=1, warmup=1)
        base = {"ours": t["ours, no cache"], "HF": t["HF GPT-2, no cache"], "TorchGPT": t["TorchGPT, no cache"]}
        rows = []
        for name, s in t.items():
            lib = name.split(",")[0].split()[0]
            rows.append([name, f"{n / s:,.0f}", f"{s / n * 1e3:.2f}", f"{base[lib] / s:.2f}×",
                         f"{s / t['ours, KV cache']:.2f}"])
        print(f"### {title}, {n} new tokens: vocab {cfg.vocab_size}, n_layer {cfg.n_layer}, n_head {cfg.n_head}, "
              f"n_embd {cfg.n_embd}  (greedy tokens identical across all five: {'yes' if same else 'NO'})")
        print(table(rows, ["run", "tokens/s", "ms/token", "speed-up vs no cache", "time / ours cached"]))
        if load.fraction is not None:
            print(f"other processes used {load.fraction:.1%} of the CPUs during this table"
                  + ("  (BUSY: 2-thread BLAS stalls when a core is taken; rerun on a quiet machine)"
                     if load.fraction > 0.05 else ""))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
