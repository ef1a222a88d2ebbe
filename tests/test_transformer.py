"""The encoder–decoder Transformer against torch.nn.Transformer (same weights,
logits and every parameter's gradient), against finite differences, its loss
against torch's cross_entropy with label smoothing, and its step-wise cached
decoding against the full forward pass."""
import math

import numpy as np
import pytest

import scratchllm as sl
from scramble import scramble  # tests/ is on sys.path
from scratchllm.models import Transformer, TransformerConfig

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # torch is a test extra: the finite-difference and decoding checks still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (test extra) is not installed")
# nn.Transformer notes that it cannot use nested tensors here; we never want its fast path anyway
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

PAD, BOS, EOS = 0, 1, 2
SMALL = dict(src_vocab_size=23, tgt_vocab_size=19, d_model=32, n_head=4, n_encoder_layers=2,
             n_decoder_layers=2, d_ff=48, dropout=0.0, max_len=16)
VARIANTS = {
    "post-norm": dict(norm_first=False),  # the paper: sinusoidal positions, tied output, ReLU
    "pre-norm-learned-untied-gelu": dict(norm_first=True, positional="learned", tie_output=False, activation="gelu"),
    "pre-norm-shared": dict(norm_first=True, shared_embeddings=True, src_vocab_size=19),
}


def padded_batch(vocab, lengths, T, seed, bos=False):
    """Random ids in [3, vocab) with padding after each row's length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(len(lengths), T))
    if bos:
        ids[:, 0] = BOS
    for i, n in enumerate(lengths):
        ids[i, n:] = PAD
    return ids


# ---- the reference: torch.nn.Transformer plus embeddings, positions and output layer ----
def torch_sinusoid(n, d):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), written out afresh."""
    pe = torch.zeros(n, d, dtype=torch.float64)
    for p in range(n):
        for i in range(0, d, 2):
            angle = p / 10000 ** (i / d)
            pe[p, i] = math.sin(angle)
            if i + 1 < d:
                pe[p, i + 1] = math.cos(angle)
    return pe.float()


class TorchSeq2Seq(torch.nn.Module if torch is not None else object):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        nn = torch.nn
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        if cfg.shared_embeddings:
            self.tgt_embed.weight = self.src_embed.weight
        if cfg.positional == "learned":
            self.src_pos_embed = nn.Embedding(cfg.max_len, cfg.d_model)
            self.tgt_pos_embed = nn.Embedding(cfg.max_len, cfg.d_model)
        act = torch.relu if cfg.activation == "relu" else (lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
        self.transformer = nn.Transformer(cfg.d_model, cfg.n_head, cfg.n_encoder_layers, cfg.n_decoder_layers,
                                          cfg.d_ff, dropout=0.0, activation=act, batch_first=True,
                                          norm_first=cfg.norm_first, layer_norm_eps=cfg.layer_norm_eps)
        if not cfg.norm_first:  # nn.Transformer always adds final norms; the paper's post-norm has none
            self.transformer.encoder.norm = None
            self.transformer.decoder.norm = None
        if not cfg.tie_output:
            self.lm_head = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.register_buffer("pe", torch_sinusoid(cfg.max_len, cfg.d_model))

    def embed(self, emb, pos_emb, ids):
        x = emb(ids) * math.sqrt(self.cfg.d_model)
        T = ids.shape[1]
        return x + (self.pe[:T] if self.cfg.positional == "sinusoidal" else pos_emb(torch.arange(T)))

    def forward(self, src, tgt):
        src_pad, tgt_pad = src == self.cfg.pad_id, tgt == self.cfg.pad_id  # True = not attended
        T = tgt.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        h = self.transformer(self.embed(self.src_embed, getattr(self, "src_pos_embed", None), src),
                             self.embed(self.tgt_embed, getattr(self, "tgt_pos_embed", None), tgt),
                             tgt_mask=causal, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                             memory_key_padding_mask=src_pad)
        head = self.tgt_embed.weight if self.cfg.tie_output else self.lm_head.weight
        return h @ head.T


def torch_name(name):
    """Our parameter name -> the reference's: the layers live under ``transformer.``."""
    return "transformer." + name if name.startswith(("encoder.", "decoder.")) else name


def torch_copy(model):
    ref = TorchSeq2Seq(model.config).train()  # train mode: no nested-tensor fast path (dropout is 0)
    params = dict(ref.named_parameters())
    ours = dict(model.named_parameters())
    assert sorted(torch_name(n) for n in ours) == sorted(params)  # the rename table is complete
    with torch.no_grad():
        for name, p in ours.items():
            params[torch_name(name)].copy_(torch.from_numpy(p.data))
    return ref


def make_model(variant, seed=1):
    cfg = TransformerConfig(**{**SMALL, **VARIANTS[variant]})
    return scramble(Transformer(cfg, seed=seed), seed=seed)


def make_pair(variant, seed=1):
    model = make_model(variant, seed)
    return model, torch_copy(model)


def example_batch(cfg, seed=2):
    src = padded_batch(cfg.src_vocab_size, [9, 6, 3], 9, seed)  # padding in the source …
    tgt = padded_batch(cfg.tgt_vocab_size, [7, 7, 4], 7, seed + 1, bos=True)  # … and in the target
    return src, tgt


# ---- parity with PyTorch ------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_gradients_match_torch(variant):
    model, ref = make_pair(variant)
    src, tgt = example_batch(model.config)

    logits = model(src, tgt)
    ref_logits = ref(torch.from_numpy(src), torch.from_numpy(tgt))
    assert logits.shape == (3, 7, model.config.tgt_vocab_size) and logits.dtype == np.float32
    # every position, pads included: both compute them the same way (train mode, no fast path)
    np.testing.assert_allclose(logits.data, ref_logits.detach().numpy(), rtol=1e-4, atol=1e-4)

    w = np.random.default_rng(3).standard_normal(logits.shape).astype(np.float32)
    logits.backward(w)
    ref_logits.backward(torch.from_numpy(w))
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g = ref_params[torch_name(name)].grad.numpy()
        assert p.grad is not None, name
        scale = max(float(np.abs(g).max()), 1.0)
        np.testing.assert_allclose(p.grad, g, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


@needs_torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_with_label_smoothing_matches_torch(smoothing):
    model, ref = make_pair("post-norm", seed=4)
    src, tgt = example_batch(model.config, seed=5)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    assert (tgt_out == PAD).any()

    loss = model.loss(src, tgt_in, tgt_out, label_smoothing=smoothing)
    loss.backward()
    ref_logits = ref(torch.from_numpy(src), torch.from_numpy(tgt_in))
    ref_loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, ref_logits.shape[-1]),
                                                 torch.from_numpy(tgt_out).reshape(-1), ignore_index=PAD,
                                                 label_smoothing=smoothing)
    ref_loss.backward()
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g = ref_params[torch_name(name)].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=1e-4, atol=1e-4 * max(float(np.abs(g).max()), 1e-2),
                                   err_msg=name)


# ---- finite differences ---------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True])
def test_gradients_match_finite_differences(norm_first):
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=6, d_model=8, n_head=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=12, dropout=0.0, max_len=8, norm_first=norm_first,
                            positional="learned" if norm_first else "sinusoidal", tie_output=not norm_first)
    model = scramble(Transformer(cfg, seed=6), seed=6).astype(np.float64)
    src = padded_batch(cfg.src_vocab_size, [5, 3], 5, seed=7)
    tgt = padded_batch(cfg.tgt_vocab_size, [5, 3], 5, seed=8, bos=True)

    def loss():
        return model.loss(src, tgt[:, :-1], tgt[:, 1:], label_smoothing=0.1)

    out = loss()
    assert out.dtype == np.float64
    out.backward()
    rng = np.random.default_rng(9)
    eps = 1e-6
    with sl.no_grad():
        for name, p in model.named_parameters():
            flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
            for j in rng.choice(flat.size, size=min(4, flat.size), replace=False):  # a few entries each
                orig = flat[j]
                flat[j] = orig + eps
                plus = loss().item()
                flat[j] = orig - eps
                minus = loss().item()
                flat[j] = orig
                numeric = (plus - minus) / (2 * eps)
                assert abs(grad[j] - numeric) <= 1e-6 + 1e-5 * abs(numeric), (name, j, grad[j], numeric)


# ---- step-wise decoding --------------------------------------------------------
@pytest.mark.parametrize("variant", ["post-norm", "pre-norm-learned-untied-gelu"])
def test_cached_decoding_equals_full_forward(variant):
    model = make_model(variant, seed=10).astype(np.float64)
    src, tgt = example_batch(model.config, seed=11)
    full = model(src, tgt).data  # (B, T, V)

    memory, src_mask = model.encode(src)
    cache = model.new_cache(memory, src_mask, max_len=tgt.shape[1])
    steps = [model.decode(tgt[:, lo:hi], None, None, cache).data for lo, hi in [(0, 1), (1, 3), (3, 4), (4, 7)]]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)
    with pytest.raises(sl.ScratchError):
        model.decode(tgt[:, :1], None, None, cache)  # the cache is full


def test_dropout_only_in_training():
    cfg = TransformerConfig(**{**SMALL, "dropout": 0.3})
    model = Transformer(cfg, seed=12)
    src, tgt = example_batch(cfg, seed=13)
    train_out = model(src, tgt).data
    model.eval()
    eval_out = model(src, tgt).data
    assert not np.allclose(train_out, eval_out)
    ref = Transformer(TransformerConfig(**SMALL), seed=12)  # same weights, no dropout at all
    np.testing.assert_array_equal(eval_out, ref(src, tgt).data)


def test_checkpoint_round_trip(tmp_path):
    cfg = TransformerConfig(**{**SMALL, **VARIANTS["pre-norm-shared"]})
    model = scramble(Transformer(cfg, seed=14))
    sl.save(model, tmp_path / "ckpt")
    loaded = sl.load(tmp_path / "ckpt")
    assert isinstance(loaded, Transformer) and loaded.config == cfg
    assert loaded.tgt_embed.weight is loaded.src_embed.weight
    src, tgt = example_batch(cfg)
    np.testing.assert_array_equal(loaded(src, tgt).data, model(src, tgt).data)


def test_bad_config_and_input_give_clear_errors():
    with pytest.raises(sl.ScratchError, match="divisible"):
        TransformerConfig(d_model=30, n_head=4)
    with pytest.raises(sl.ScratchError, match="joint vocabulary"):
        TransformerConfig(src_vocab_size=5, tgt_vocab_size=6, shared_embeddings=True)
    model = Transformer(TransformerConfig(**SMALL))
    with pytest.raises(sl.ScratchError, match="max_len"):
        model(np.ones((1, 17), dtype=int), np.ones((1, 3), dtype=int))


def test_learns_to_reverse_sequences():
    """A real task, learned in seconds: the target is the source backwards."""
    from scratchllm.translate import beam_search, greedy_decode

    V = 10
    cfg = TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, n_head=4, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=64, dropout=0.0, max_len=12)
    model = Transformer(cfg, seed=0)
    opt = sl.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)

    def batch(B):
        src, tgt = np.full((B, 6), PAD), np.full((B, 8), PAD)
        for i, n in enumerate(rng.integers(2, 7, size=B)):
            s = rng.integers(3, V, size=n)
            src[i, :n], tgt[i, 0], tgt[i, 1:n + 1], tgt[i, n + 1] = s, BOS, s[::-1], EOS
        return src, tgt

    losses = []
    for _ in range(400):
        src, tgt = batch(32)
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        model.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and np.mean(losses[-20:]) < 0.4

    src, tgt = batch(50)
    want = [list(row[1:list(row).index(EOS)]) for row in tgt]
    greedy_right = np.mean([h == w for h, w in zip(greedy_decode(model, src, BOS, EOS), want)])
    beam_right = np.mean([h == w for h, w in zip(beam_search(model, src, BOS, EOS, beam_size=4), want)])
    assert greedy_right >= 0.7 and beam_right >= 0.7, (greedy_right, beam_right)
