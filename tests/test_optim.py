"""optim: AdamW, SGD and gradient clipping step for step against torch.optim,
optimizer state round trips, and the cosine-with-warmup schedule by hand."""
import json
import math

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import functional as F
from scratchllm import nn
from scratchllm.optim import SGD, AdamW, CosineWithWarmup, clip_grad_norm, cosine_with_warmup
from scratchllm.tensor import Tensor

try:
    import torch
    from torch_ref import assert_close
except ImportError:  # torch is a test extra
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (test extra) is not installed")

SIZES = [6, 16, 12, 3]
_data_rng = np.random.default_rng(0)
X = _data_rng.standard_normal((32, 6)).astype(np.float32)
Y = _data_rng.integers(0, 3, 32)


def make_mlp(seed=0):
    return nn.MLP(SIZES, rng=np.random.default_rng(seed))


def make_torch_mlp(ours):
    L = torch.nn.Linear
    ref = torch.nn.Sequential(L(6, 16), torch.nn.ReLU(), L(16, 12), torch.nn.ReLU(), L(12, 3))
    ref.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})
    return ref


def step_ours(model, opt, max_norm=None):
    opt.zero_grad()
    loss = F.cross_entropy(model(Tensor(X)), Y)
    loss.backward()
    norm = clip_grad_norm(model.parameters(), max_norm) if max_norm else None
    opt.step()
    return loss.item(), norm


def step_torch(model, opt, max_norm=None):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(Y))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item() if max_norm else None
    opt.step()
    return loss.item(), norm


def assert_same_params(ours, ref, step):
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.data, ref_params[name], err_msg=f"{name} after step {step}")


def run_both(ours, ref, opt, ref_opt, steps=20, max_norm=None):
    """Train both side by side; losses, norms and parameters agree after every step."""
    norms = []
    for step in range(1, steps + 1):
        loss, norm = step_ours(ours, opt, max_norm)
        ref_loss, ref_norm = step_torch(ref, ref_opt, max_norm)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6, err_msg=f"loss at step {step}")
        if max_norm:
            np.testing.assert_allclose(norm, ref_norm, rtol=1e-5, err_msg=f"grad norm at step {step}")
            norms.append(norm)
        assert_same_params(ours, ref, step)
    return norms


# ---- against torch.optim -----------------------------------------------------
@needs_torch
@pytest.mark.parametrize("max_norm, clipping", [(0.05, True), (100.0, False)], ids=["clipped", "not-clipped"])
def test_adamw_with_clipping_vs_torch(max_norm, clipping):
    ours = make_mlp()
    ref = make_torch_mlp(ours)
    opt = AdamW(ours.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    norms = run_both(ours, ref, opt, ref_opt, max_norm=max_norm)
    assert all((n > max_norm) == clipping for n in norms)


@needs_torch
def test_adamw_defaults_vs_torch():
    ours = make_mlp(1)
    ref = make_torch_mlp(ours)
    run_both(ours, ref, AdamW(ours.parameters()), torch.optim.AdamW(ref.parameters()), steps=5)


def decay_groups(model):
    named = list(model.named_parameters())
    return ([p for n, p in named if n.endswith("weight")], [p for n, p in named if n.endswith("bias")])


@needs_torch
def test_adamw_two_param_groups_vs_torch():
    ours = make_mlp(2)
    ref = make_torch_mlp(ours)
    (dw, nd), (rdw, rnd) = decay_groups(ours), decay_groups(ref)
    opt = AdamW([{"params": dw, "weight_decay": 0.5}, {"params": nd, "weight_decay": 0.0, "lr": 5e-3}], lr=2e-2)
    ref_opt = torch.optim.AdamW([{"params": rdw, "weight_decay": 0.5}, {"params": rnd, "weight_decay": 0.0, "lr": 5e-3}],
                                lr=2e-2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert [g["lr"] for g in opt.param_groups] == [2e-2, 5e-3]
    run_both(ours, ref, opt, ref_opt, steps=10)


@needs_torch
@pytest.mark.parametrize("settings", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, weight_decay=0.1),
], ids=["plain", "momentum", "nesterov-wd", "momentum-wd"])
def test_sgd_vs_torch(settings):
    ours = make_mlp(3)
    ref = make_torch_mlp(ours)
    run_both(ours, ref, SGD(ours.parameters(), **settings), torch.optim.SGD(ref.parameters(), **settings), steps=15)


@needs_torch
def test_clip_grad_norm_vs_torch():
    ours = make_mlp(4)
    ref = make_torch_mlp(ours)
    F.cross_entropy(ours(Tensor(X)), Y).backward()
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
    norm = clip_grad_norm(ours.parameters(), 0.1)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1).item()
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad, err_msg=name)


# ---- clip_grad_norm by hand --------------------------------------------------
def with_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = [nn.Parameter(np.zeros(s, np.float32)) for s in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    return params


def numpy_norm(grads):
    return math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))


@pytest.mark.parametrize("scale", [1.0, 1e-3])  # small norms show torch's +1e-6 in the factor
def test_clip_grad_norm_returns_pre_clip_norm_and_scales(scale):
    params = with_grads()
    for p in params:
        p.grad *= np.float32(scale)
    before = [p.grad.copy() for p in params]
    expected = numpy_norm(before)
    max_norm = expected / 4
    norm = clip_grad_norm(params, max_norm)
    assert isinstance(norm, float)
    np.testing.assert_allclose(norm, expected, rtol=1e-6)
    np.testing.assert_allclose(numpy_norm([p.grad for p in params]), max_norm, rtol=1e-3)
    for p, g in zip(params, before):  # one common factor max_norm / (norm + 1e-6), directions kept
        np.testing.assert_allclose(p.grad, g * (max_norm / (expected + 1e-6)), rtol=1e-6)
        assert p.grad.dtype == np.float32


def test_clip_grad_norm_below_max_leaves_grads():
    params = with_grads(1)
    before = [p.grad.copy() for p in params]
    norm = clip_grad_norm(params, 1e3)
    np.testing.assert_allclose(norm, numpy_norm(before), rtol=1e-6)
    for p, g in zip(params, before):
        np.testing.assert_array_equal(p.grad, g)


def test_clip_grad_norm_skips_params_without_grad():
    params = with_grads(2)
    params[1].grad = None
    expected = numpy_norm([params[0].grad, params[2].grad])
    np.testing.assert_allclose(clip_grad_norm(params, 1e3), expected, rtol=1e-6)
    assert clip_grad_norm([nn.Parameter(np.zeros(3, np.float32))], 1.0) == 0.0


# ---- hand-computed updates ---------------------------------------------------
def test_sgd_momentum_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0], np.float64))
    opt = SGD([p], lr=0.1, momentum=0.5)
    g = np.array([0.4, 1.0])
    p.grad = g.copy()
    opt.step()  # b = g
    np.testing.assert_allclose(p.data, [1 - 0.04, -2 - 0.1])
    p.grad = g.copy()
    opt.step()  # b = 0.5·g + g = 1.5·g
    np.testing.assert_allclose(p.data, [1 - 0.04 - 0.06, -2 - 0.1 - 0.15])


def test_adamw_first_step_by_hand():
    # step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) ≈ lr·sign(g), after decay p·(1 − lr·wd)
    p = nn.Parameter(np.array([1.0, -2.0, 3.0], np.float64))
    opt = AdamW([p], lr=0.1, weight_decay=0.5, eps=1e-8)
    p.grad = np.array([0.3, -5.0, 0.0])
    opt.step()
    decayed = np.array([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.5)
    np.testing.assert_allclose(p.data, decayed - 0.1 * np.array([0.3 / (0.3 + 1e-8), -5 / (5 + 1e-8), 0.0]))


def test_params_without_grad_are_left_alone():
    a, b = nn.Parameter(np.ones(3, np.float32)), nn.Parameter(np.ones(3, np.float32))
    opt = AdamW([a, b], lr=0.1)
    a.grad = np.ones(3, np.float32)
    opt.step()
    assert np.all(a.data < 1) and np.all(b.data == 1)  # no gradient: not even weight decay


def test_lr_setter_and_zero_grad():
    params = with_grads()
    opt = SGD(params, lr=0.1)
    opt.lr = 0.02
    assert opt.lr == 0.02 and all(g["lr"] == 0.02 for g in opt.param_groups)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError):
        SGD([], lr=0.1)


# ---- state_dict ----------------------------------------------------------------
def clone(model):
    twin = make_mlp(99)
    twin.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    return twin


@pytest.mark.parametrize("make_opt", [
    lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: AdamW([{"params": ps[::2], "weight_decay": 0.1}, {"params": ps[1::2], "weight_decay": 0.0}], lr=1e-2),
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
], ids=["adamw", "adamw-groups", "sgd-nesterov"])
def test_state_dict_resume_is_bit_identical(make_opt):
    model = make_mlp(5)
    opt = make_opt(model.parameters())
    for _ in range(5):
        step_ours(model, opt, max_norm=1.0)
    sd = opt.state_dict()
    # as a checkpoint stores it: settings through JSON, arrays copied
    saved = {"step": sd["step"], "groups": json.loads(json.dumps(sd["groups"])),
             "state": {k: np.array(v) for k, v in sd["state"].items()}}
    assert saved["step"] == 5 and saved["state"]
    twin = clone(model)
    twin_opt = make_opt(twin.parameters())
    twin_opt.load_state_dict(saved)
    for _ in range(5):
        step_ours(model, opt, max_norm=1.0)
        step_ours(twin, twin_opt, max_norm=1.0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_state_dict_restores_settings():
    model = make_mlp()
    opt = AdamW(model.parameters(), lr=3e-3, betas=(0.8, 0.9))
    step_ours(model, opt)
    fresh = AdamW(model.parameters())
    fresh.load_state_dict(json.loads(json.dumps({**opt.state_dict(), "state": {}})))
    assert fresh.lr == 3e-3 and fresh.param_groups[0]["betas"] == (0.8, 0.9) and fresh.step_count == 1


def test_load_state_dict_mismatch_raises():
    model = make_mlp()
    opt = AdamW(model.parameters())
    step_ours(model, opt)
    sd = opt.state_dict()
    two_groups = AdamW([{"params": model.parameters()[:2]}, {"params": model.parameters()[2:]}])
    with pytest.raises(sl.ScratchError, match="groups"):
        two_groups.load_state_dict(sd)
    other = AdamW(make_mlp().parameters()[::-1])  # same count, shapes in another order
    with pytest.raises(sl.ScratchError, match="shape"):
        other.load_state_dict(sd)


# ---- learning-rate schedule ------------------------------------------------------
@pytest.mark.parametrize("step, expected", [
    (0, 1.0 / 10),           # warmup starts at lr / warmup
    (4, 5.0 / 10),
    (9, 1.0),                # end of warmup: the full lr
    (10, 1.0),               # the cosine starts at lr
    (60, (1.0 + 0.1) / 2),   # midpoint of the cosine
    (35, 0.1 + 0.45 * (1 + math.sqrt(0.5))),  # a quarter of the way: cos(π/4)
    (110, 0.1),              # end: min_lr
    (500, 0.1),              # after the end: min_lr
])
def test_cosine_with_warmup(step, expected):
    sched = CosineWithWarmup(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert sched(step) == pytest.approx(expected, rel=1e-12)
    assert cosine_with_warmup(step, 1.0, 0.1, 10, 110) == pytest.approx(expected, rel=1e-12)


def test_cosine_without_warmup_is_monotone():
    sched = CosineWithWarmup(lr=6e-4, min_lr=6e-5, warmup=0, total=100)
    values = [sched(s) for s in range(101)]
    assert values[0] == pytest.approx(6e-4) and values[100] == pytest.approx(6e-5)
    assert all(a >= b for a, b in zip(values, values[1:]))
