"""Llama training speed and quality: scratchllm's Llama against transformers'
``LlamaForCausalLM`` run by PyTorch eager, same weights, same batch, same process.

Two shapes, AdamW (β₂ 0.99, weight decay 0.1 on matrices) + gradient clipping 1.0 on both:

* small: what ``scratchllm train --arch llama`` builds (4 layers, width 128, 4 query and
  2 key/value heads, MLP 384, tinyshakespeare's 65 characters, batch 12 × 64);
* smollm2: SmolLM2-135M's shape (30 layers, width 576, 9 query and 3 key/value heads,
  MLP 1536, vocabulary 49,152, tied; random weights), batch 4 × 256.

    python bench/train_llama.py                    # both shapes: interleaved ms/step, ratio, peak memory alone
    python bench/train_llama.py --shapes small     # one shape
    python bench/train_llama.py --quality          # + 2000 steps of the Llama and GPT presets on
                                                   #   tinyshakespeare with `scratchllm train`, val loss side by side
    python bench/train_llama.py --profile          # + where a step of ours goes (smollm2 shape)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# bench/tokenizers.py would shadow the `tokenizers` package transformers imports:
# take bench/ off the path and load the shared helpers by file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("bench_common", HERE / "common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
OtherLoad, header, table, use_torch_threads = _common.OtherLoad, _common.header, _common.table, _common.use_torch_threads

from scratchllm.data import dataset_file, get_batch  # noqa: E402
from scratchllm.models.llama import Llama, LlamaConfig  # noqa: E402
from scratchllm.optim import adamw_for, clip_grad_norm  # noqa: E402
from scratchllm.sharded import ShardedBackward  # noqa: E402
from scratchllm.tokenizers import CharTokenizer  # noqa: E402
from scratchllm.train import TrainConfig, llama_config  # noqa: E402

LR, BETAS, WEIGHT_DECAY, CLIP, SEED = 1e-3, (0.9, 0.99), 0.1, 1.0, 1337
QUALITY_STEPS = (0, 500, 1000, 1500, 2000)
TORCH_THREADS = 2  # --torch-threads


def shared_data_dir():
    """../shared/data beside the repository, unless SCRATCHLLM_DATA_DIR says otherwise."""
    d = HERE.parent.parent / "shared" / "data"
    return d if d.is_dir() and not os.environ.get("SCRATCHLLM_DATA_DIR") else None


def shape(name: str):
    """(LlamaConfig, batch, block, batch source) of a benchmark shape."""
    if name == "small":
        cfg = TrainConfig(arch="llama", data="tinyshakespeare")
        text = dataset_file("tinyshakespeare", "input.txt", data_dir=shared_data_dir()).read_text()
        tok = CharTokenizer.from_text(text)
        ids = np.asarray(tok.encode(text), dtype=np.int64)
        return llama_config(cfg, tok.vocab_size), cfg.batch_size, cfg.block_size, ids
    if name == "smollm2":
        lcfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                           rope_theta=100000.0, tie_word_embeddings=True)
        # random tokens: the step's cost does not depend on which
        ids = np.random.default_rng(0).integers(0, lcfg.vocab_size, 200_000)
        return lcfg, 4, 256, ids
    raise SystemExit(f"unknown shape {name!r}: small or smollm2")


class Ours:
    def __init__(self, lcfg, batch, block, ids, threads=2, model=None):
        self.model = model if model is not None else Llama(lcfg, seed=SEED)
        self.opt = adamw_for(self.model, LR, BETAS, WEIGHT_DECAY)
        self.backward = ShardedBackward(self.model, threads)
        self.batch, self.block, self.ids = batch, block, ids
        self.rng = np.random.default_rng(0)

    def step(self):
        x, y = get_batch(self.ids, self.batch, self.block, self.rng)
        self.model.zero_grad()
        loss = self.backward.step(x, y)
        clip_grad_norm(self.model.parameters(), CLIP)
        self.opt.step()
        return loss


def hf_model(lcfg, ours=None):
    """transformers' LlamaForCausalLM of this shape: with ``ours``'s weights (written by
    save_hf_llama and read back), else random."""
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from scratchllm.hf.llama import hf_config_from_llama, save_hf_llama

    if ours is None:
        hf = {k: v for k, v in hf_config_from_llama(lcfg).items() if k not in ("architectures", "model_type")}
        return LlamaForCausalLM(HFConfig(**hf)).float().train()
    with tempfile.TemporaryDirectory() as d:
        save_hf_llama(ours, Path(d) / "llama")
        model = LlamaForCausalLM.from_pretrained(Path(d) / "llama", dtype=torch.float32)
    return model.train()


class Reference:
    def __init__(self, lcfg, batch, block, ids, ours_model=None):
        import torch

        self.torch = torch
        self.model = hf_model(lcfg, ours_model)
        params = list(self.model.parameters())  # the tied matrix once
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
        self.batch, self.block, self.ids = batch, block, ids
        self.rng = np.random.default_rng(0)

    def step(self):
        torch = self.torch
        x, y = get_batch(self.ids, self.batch, self.block, self.rng)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(torch.from_numpy(x)).logits  # (B, T, V); our targets are already shifted
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        return loss.item()


def check_agreement(ours, ref, batch, block, ids):
    """The two models' logits on one batch before any step: the same weights read the same way."""
    torch = ref.torch
    x, _ = get_batch(ids, min(batch, 2), block, np.random.default_rng(7))
    ours.model.eval()
    a = ours.model(x).data
    ours.model.train()
    with torch.no_grad():
        b = ref.model(torch.from_numpy(x)).logits.numpy()
    err = float(np.max(np.abs(a - b)))
    if err > 1e-3:
        raise SystemExit(f"logits differ by {err:.2e}: the two models are not the same")
    return err


def speed(name: str, rounds: int, steps: int):
    torch = use_torch_threads(TORCH_THREADS)
    lcfg, batch, block, ids = shape(name)
    ours = Ours(lcfg, batch, block, ids, threads=2)
    ref = Reference(lcfg, batch, block, ids, ours.model)
    err = check_agreement(ours, ref, batch, block, ids)
    runners = {"scratchllm (--threads 2)": ours, "pytorch + transformers": ref}
    first = {}
    for k, r in runners.items():
        t0 = time.perf_counter()
        r.step()
        first[k] = time.perf_counter() - t0
    for r in runners.values():  # warm-up
        r.step()
    times = {k: [] for k in runners}
    with OtherLoad() as load:
        for _ in range(rounds):  # interleaved: a noisy neighbour hits both alike
            for k, r in runners.items():
                time.sleep(0.25)  # the previous runner's idle BLAS/OpenMP threads stop spinning first
                t0 = time.perf_counter()
                for _ in range(steps):
                    r.step()
                times[k].append((time.perf_counter() - t0) / steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ours_ms, ref_ms = (1e3 * med[k] for k in runners)
    n = ours.model.num_parameters()
    print(f"\n## {name}: {n:,} parameters, {lcfg.num_hidden_layers} layers, width {lcfg.hidden_size}, "
          f"{lcfg.num_attention_heads}/{lcfg.num_key_value_heads} heads, MLP {lcfg.intermediate_size}, "
          f"vocab {lcfg.vocab_size}; batch {batch} × {block}")
    print(f"logits before training agree within {err:.1e}; median of {rounds} interleaved rounds of {steps} steps; "
          f"other processes used {load.fraction:.0%} of the CPU meanwhile\n")
    rows = [(k, f"{1e3 * med[k]:.1f}", f"{batch * block / med[k]:,.0f}", f"{med['pytorch + transformers'] / med[k]:.2f}",
             f"{first[k]:.2f}", " ".join(f"{1e3 * t:.0f}" for t in times[k])) for k in runners]
    print(table(rows, ["", "ms/step", "tokens/s", "speed vs pytorch", "first step (s)", "each round (ms/step)"]))
    print(f"\nspeed ratio scratchllm / pytorch ({name}): {ref_ms / ours_ms:.2f}", flush=True)
    return ref_ms / ours_ms, load.fraction


def _vm(field: str) -> float:
    """A /proc/self/status memory figure in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def alone_child(which: str, name: str, steps: int):
    """One implementation alone in this fresh process: its peak resident memory (VmHWM,
    set-up and steps together) and the median ms of ``steps`` steps after one warm-up."""
    lcfg, batch, block, ids = shape(name)
    if which == "pytorch":
        use_torch_threads(TORCH_THREADS)
        runner = Reference(lcfg, batch, block, ids)
    else:
        runner = Ours(lcfg, batch, block, ids, threads=2)
    setup = _vm("VmRSS")
    runner.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"peak_mib": _vm("VmHWM"), "setup_mib": setup, "ms": 1e3 * float(np.median(times))}))


def alone(name: str, steps: int):
    rows, res = [], {}
    for which, label, env in (("ours", "scratchllm (--threads 2)", {}),
                              ("pytorch", "pytorch + transformers", {"SCRATCHLLM_MALLOC": "default"})):
        argv = [sys.executable, __file__, "--alone-child", which, "--shapes", name, "--steps", str(steps),
                "--torch-threads", str(TORCH_THREADS)]
        out = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, **env), check=True).stdout
        res[label] = r = json.loads(out.strip().splitlines()[-1])
        rows.append((label, f"{r['ms']:.1f}", f"{r['setup_mib']:.0f}", f"{r['peak_mib']:.0f}"))
    print(f"\n{name}, each alone in a fresh process (median of {steps} steps after one; peak = VmHWM of the "
          "whole process, set-up included)\n")
    print(table(rows, ["", "ms/step", "RSS after set-up (MiB)", "peak RSS (MiB)"]), flush=True)
    return res


def quality(out_root: Path, threads: int):
    """The Llama preset and the GPT preset trained by `scratchllm train` on tinyshakespeare, one after the
    other, the same seed (so the same batches); val loss at QUALITY_STEPS read from each log.jsonl."""
    data_dir = shared_data_dir()
    curves = {}
    for arch in ("llama", "gpt"):
        run = out_root / f"quality_{arch}"
        argv = [sys.executable, "-m", "scratchllm", "train", "--arch", arch, "--data", "tinyshakespeare",
                "--out", str(run), "--max-iters", str(QUALITY_STEPS[-1]), "--eval-interval", "500",
                "--threads", str(threads), "--sample-tokens", "0", "--snapshots", "0", "--no-progress"]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        print("$ " + " ".join(argv[1:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        secs = time.perf_counter() - t0
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        curves[arch] = ({r["step"]: r["val_loss"] for r in log if "val_loss" in r}, secs)
        print(f"{arch}: {secs:.0f} s", flush=True)
    rows = [(str(s),) + tuple(f"{curves[a][0].get(s, float('nan')):.3f}" for a in ("llama", "gpt"))
            for s in QUALITY_STEPS]
    print("\nval loss, tinyshakespeare char-level, batch 12 × 64, the same seed and batches\n")
    print(table(rows, ["step", "llama preset", "gpt preset"]))
    print(f"\nwall time: llama {curves['llama'][1]:.0f} s, gpt {curves['gpt'][1]:.0f} s")
    return curves


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,smollm2", help="comma-separated: small, smollm2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="steps per round (0: 10 for small, 1 for smollm2)")
    ap.add_argument("--no-alone", action="store_true", help="skip the fresh-process runs (peak memory)")
    ap.add_argument("--quality", action="store_true", help="also the 2000-step quality comparison")
    ap.add_argument("--quality-only", action="store_true", help="only the quality comparison")
    ap.add_argument("--quality-out", default=None, help="run directories of --quality (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2, help="--threads of the quality runs")
    ap.add_argument("--profile", action="store_true", help="also where a step of ours goes (last shape)")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="PyTorch's intra-op threads (2: both cores; its OpenMP threads suffer most from a busy machine)")
    ap.add_argument("--alone-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global TORCH_THREADS
    TORCH_THREADS = args.torch_threads
    shapes = [s for s in args.shapes.split(",") if s]
    if args.alone_child:
        return alone_child(args.alone_child, shapes[0], args.steps or 3)
    if not args.quality_only:
        print(header(use_torch_threads(TORCH_THREADS)))
        for name in shapes:
            steps = args.steps or (10 if name == "small" else 1)
            speed(name, args.rounds, steps)
            if not args.no_alone:
                alone(name, 20 if name == "small" else 3)
        if args.profile:
            profile(shapes[-1])
    if args.quality or args.quality_only:
        if args.quality_out:
            quality(Path(args.quality_out), args.threads)
        else:
            with tempfile.TemporaryDirectory() as d:
                quality(Path(d), args.threads)


def profile(name: str, steps: int = 3):
    """Phases of our step at one shape: both shards' forward + backward, clipping, AdamW;
    then a cProfile of one step, top functions by own time."""
    import cProfile
    import pstats

    lcfg, batch, block, ids = shape(name)
    ours = Ours(lcfg, batch, block, ids, threads=2)
    ours.step()
    phases = {"forward + backward (2 shards)": [], "clip": [], "AdamW": []}
    rng = np.random.default_rng(3)
    for _ in range(steps):
        x, y = get_batch(ids, batch, block, rng)
        ours.model.zero_grad()
        t0 = time.perf_counter()
        ours.backward.step(x, y)
        t1 = time.perf_counter()
        clip_grad_norm(ours.model.parameters(), CLIP)
        t2 = time.perf_counter()
        ours.opt.step()
        t3 = time.perf_counter()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[k].append(v)
    print(f"\nPhases of our step ({name}), median ms over {steps} steps\n")
    print(table([(k, f"{1e3 * float(np.median(v)):.0f}") for k, v in phases.items()], ["", "ms"]))
    prof = cProfile.Profile()
    prof.enable()
    ours.step()
    prof.disable()
    print(f"\ncProfile of one step ({name}; work on the shard thread is not seen, only the main thread's)\n")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
