"""GPT against a PyTorch GPT of the same architecture (tests/torch_gpt.py),
against finite differences, and its KV cache against the full forward."""
import numpy as np
import pytest

import scratchllm as sl
from scramble import scramble  # tests/ is on sys.path
from scratchllm.models.gpt import GPT, GPTConfig

try:
    import torch
    from torch_gpt import TorchGPT  # tests/ is on sys.path

    torch.set_num_threads(2)
except ImportError:  # torch is a test extra: the finite-difference and KV-cache checks still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (test extra) is not installed")

SMALL = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "default": {},  # learned positions, tied head
    "sinusoidal-untied": dict(positional="sinusoidal", tie_weights=False),
    "no-bias": dict(bias=False),
}


def batch(cfg, B, T, seed, ignore_fraction=0.25):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets[rng.random((B, T)) < ignore_fraction] = -100
    return ids, targets


def grad_atol(ref_grad):
    """Gradients that are nearly zero are compared against the tensor's scale, not their own."""
    return 1e-5 * max(float(ref_grad.abs().max()), 1e-3)


# ---- parity with PyTorch ------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_loss_and_gradients_match_torch(variant):
    cfg = GPTConfig(**SMALL, **VARIANTS[variant])
    model = scramble(GPT(cfg, seed=1))
    ref = TorchGPT.from_scratch(model)
    ids, targets = batch(cfg, B=3, T=12, seed=2)
    assert (targets == -100).any() and (targets != -100).any()

    logits, loss = model(ids, targets)
    loss.backward()
    ref_logits, ref_loss = ref(torch.from_numpy(ids), torch.from_numpy(targets))
    ref_loss.backward()

    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits.data, ref_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    assert names == list(ref_params)  # same names, same order
    assert ("lm_head.weight" in names) == (not cfg.tie_weights)
    for name, p in model.named_parameters():
        g = ref_params[name].grad
        assert p.grad is not None, name
        np.testing.assert_allclose(p.grad, g.numpy(), rtol=1e-4, atol=grad_atol(g), err_msg=name)


@needs_torch
def test_eval_mode_with_dropout_matches_torch():
    cfg = GPTConfig(**SMALL, dropout=0.3)
    model = scramble(GPT(cfg, seed=3)).eval()
    ref = TorchGPT.from_scratch(model).eval()
    ids, _ = batch(cfg, B=2, T=16, seed=4)
    np.testing.assert_allclose(model(ids).data, ref(torch.from_numpy(ids)).detach().numpy(), rtol=1e-4, atol=1e-5)
    model.train()
    assert not np.allclose(model(ids).data, model(ids).data)  # dropout really is on in training


@needs_torch
def test_adamw_training_trajectory_matches_torch():
    cfg = GPTConfig(**SMALL)
    model = scramble(GPT(cfg, seed=5))
    ref = TorchGPT.from_scratch(model)
    settings = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)

    def groups(named):
        named = list(named)
        return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]

    opt = sl.optim.AdamW(groups(model.named_parameters()), **settings)
    ref_opt = torch.optim.AdamW(groups(ref.named_parameters()), **settings)
    losses, ref_losses, norms = [], [], []
    for step in range(10):
        ids, targets = batch(cfg, B=4, T=16, seed=100 + step, ignore_fraction=0.1)
        opt.zero_grad()
        _, loss = model(ids, targets)
        loss.backward()
        norms.append(sl.optim.clip_grad_norm(model.parameters(), 1.0))
        opt.step()
        losses.append(loss.item())

        ref_opt.zero_grad()
        _, ref_loss = ref(torch.from_numpy(ids), torch.from_numpy(targets))
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_losses.append(ref_loss.item())

    assert max(norms) > 1.0  # clipping was exercised
    assert losses[-1] < losses[0] - 0.1  # and the model learned something
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-4)
    ref_params = dict(ref.named_parameters())
    C = cfg.n_embd
    for name, p in model.named_parameters():
        ours, theirs = p.data, ref_params[name].detach().numpy()
        if name.endswith("c_attn.bias"):
            # The key bias adds q·b to every score of a row, which softmax ignores: its true
            # gradient is 0, and Adam blows the two libraries' rounding noise up to steps of ~lr.
            ours, theirs = np.delete(ours, np.s_[C:2 * C]), np.delete(theirs, np.s_[C:2 * C])
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=name)


# ---- finite differences ---------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "sinusoidal-untied"])
def test_gradients_match_finite_differences(variant):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, **VARIANTS[variant])
    model = scramble(GPT(cfg, seed=6)).astype(np.float64)
    ids, targets = batch(cfg, B=2, T=5, seed=7)
    targets[0, 0], targets[1, 1] = -100, 3  # at least one ignored, at least one counted

    def loss_value():
        with sl.no_grad():
            return float(model(ids, targets)[1].item())

    _, loss = model(ids, targets)
    assert loss.dtype == np.float64
    loss.backward()
    rng = np.random.default_rng(8)
    eps = 1e-6
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)  # a view: writing it perturbs the model
        picks = rng.choice(flat.size, size=min(4, flat.size), replace=False)
        for j in picks:
            orig = flat[j]
            flat[j] = orig + eps
            plus = loss_value()
            flat[j] = orig - eps
            minus = loss_value()
            flat[j] = orig
            numeric = (plus - minus) / (2 * eps)
            analytic = p.grad.reshape(-1)[j]
            assert abs(analytic - numeric) <= 1e-7 + 1e-5 * abs(numeric), f"{name}[{j}]: {analytic} vs {numeric}"


# ---- KV cache -------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "sinusoidal-untied"])
def test_kv_cache_matches_full_forward(variant):
    cfg = GPTConfig(**SMALL, **VARIANTS[variant])
    model = scramble(GPT(cfg, seed=9)).eval()
    ids, _ = batch(cfg, B=2, T=cfg.block_size, seed=10)
    with sl.no_grad():
        full = model(ids).data  # (B, T, V)

        cache = model.new_cache(2)
        one_by_one = np.concatenate([model(ids[:, t:t + 1], cache=cache).data for t in range(ids.shape[1])], axis=1)
        assert cache.length == cfg.block_size

        cache = model.new_cache(2)  # a prompt in one go, then one token at a time
        chunked = np.concatenate([model(ids[:, :5], cache=cache).data]
                                 + [model(ids[:, t:t + 1], cache=cache).data for t in range(5, ids.shape[1])], axis=1)
        with pytest.raises(sl.ScratchError, match="block_size"):
            model(ids[:, :1], cache=cache)  # the cache is full
    np.testing.assert_allclose(one_by_one, full, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-5)
