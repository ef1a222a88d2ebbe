"""UnigramTokenizer against the sentencepiece library: its models read here encode identically,
ours written as .model files encode identically there; lattice, nbest, sampling, files, errors."""
import itertools
import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scratchllm.errors import ScratchError
from scratchllm.tokenizers import UnigramTokenizer, load
from scratchllm.tokenizers.normalize import Normalizer, compile_charsmap, decompile_charsmap
from tokenizers_refs import VARIED_TEXTS

spm = pytest.importorskip("sentencepiece")

GERMAN = ["Zwei junge Männer stehen auf der Straße und grüßen.", "Größe, Maß, Fußgänger, Äpfel, Öl, Übung",
          "Der Hund läuft über die Brücke; daß er müde ist, weiß jeder."]
EXTRA = GERMAN + ["漢字とかな、中文，한국어", "😀 😀😀 👍🏽 🇫🇷", "digits 0123456789 3.14 1,000,000", "\ttab\t\ttabs",
                  "runs     of      spaces", "\n\nempty lines\n\n\nbetween\n", "ﬁ ｶﾞ Ａ ① ㈱ x²", "▁already▁escaped"]
TEXTS = VARIED_TEXTS + EXTRA


def corpus() -> str:
    """A small multilingual training text made here: English prose, German, some CJK and emoji."""
    from scratchllm.data.corpus import builtin_text

    r = random.Random(0)
    words_de = "Mann Frau Kind Hund Straße grüßen läuft über schön Mädchen Fußball Brücke spielt weiß".split()
    lines = builtin_text()[:300_000].split("\n")
    lines += [" ".join(r.choice(words_de) for _ in range(r.randint(3, 12))) for _ in range(2000)]
    lines += ["漢字とかな 中文 한국어 😀 ß 42 3.14"] * 20
    return "\n".join(lines)


CONFIGS = {  # name: sentencepiece trainer options
    "v300": dict(vocab_size=300),
    "v2000-bytes": dict(vocab_size=2000, byte_fallback=True),
    "v1000-identity": dict(vocab_size=1000, normalization_rule_name="identity"),
    "v800-identity-keep-spaces-bytes": dict(vocab_size=800, normalization_rule_name="identity",
                                            remove_extra_whitespaces=False, byte_fallback=True),
    "v600-no-prefix": dict(vocab_size=600, add_dummy_prefix=False, character_coverage=0.98),
}


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    text = d / "corpus.txt"
    text.write_text(corpus(), encoding="utf-8")
    out = {}
    for name, opts in CONFIGS.items():
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(d / name), model_type="unigram",
                                       minloglevel=2, num_threads=2, **opts)
        out[name] = d / f"{name}.model"
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sentencepiece_models_encode_identically(spm_models, name):
    path = spm_models[name]
    ref = spm.SentencePieceProcessor(model_file=str(path))
    ours = UnigramTokenizer.from_sentencepiece(path)
    assert ours.vocab_size == ref.get_piece_size()
    assert [ours.id_to_token(i) for i in range(ours.vocab_size)] == [ref.id_to_piece(i) for i in range(ours.vocab_size)]
    for text in TEXTS + ["\n".join(TEXTS)]:
        ids = ref.encode(text)
        assert ours.encode(text, disallowed_special=()) == ids, text
        # sentencepiece spells an unknown piece by the text it covers; we by "<unk>".
        theirs = ["<unk>" if i == ref.unk_id() else p for i, p in zip(ids, ref.encode(text, out_type=str))]
        assert ours.pieces(ids) == theirs
        assert ours.decode(ids) == ref.decode(ids), text
        assert ours.normalizer.normalize(text) == ref.normalize(text), text


@pytest.mark.parametrize("name", list(CONFIGS))
def test_many_new_words_at_once_encode_as_sentencepiece(spm_models, name):
    # thousands of uncached words: segmented together (NumPy lattices), not one by one
    ref = spm.SentencePieceProcessor(model_file=str(spm_models[name]))
    ours = UnigramTokenizer.from_sentencepiece(spm_models[name])
    text = corpus()[:60_000] + " xyz€ ℃℃ 漢字q " * 3  # unknown characters too
    assert ours.encode(text, disallowed_special=()) == ref.encode(text)
    # Lines, and odd words (every 7th character), together as one by one (the scan of _viterbi).
    # (Not against sentencepiece here: its float32 path sums break exact ties, as in "***",
    # differently at different places in a text.)
    lines = text.split("\n")
    odd = corpus()[::7][:30_000]
    ours.clear_cache()
    together = ours.encode_batch(lines), ours.encode(odd, disallowed_special=())
    ours.clear_cache()
    ours._cache.BATCH = 10**9
    assert (ours.encode_batch(lines), ours.encode(odd, disallowed_special=())) == together


def test_suffix_array_against_sorting():
    from scratchllm.tokenizers.unigram_train import suffix_array

    r = random.Random(1)
    for trial in range(200):
        sigma = r.choice([1, 2, 3, 40, 3000])
        a = [r.randrange(sigma) for _ in range(r.randint(2, 60))] * r.choice([1, 5])
        depth = r.randint(2, 40)
        sa, lcp = suffix_array(np.asarray(a, dtype=np.int64), depth)
        h = 1 << (depth - 1).bit_length()  # sorted by this many symbols
        assert sorted(sa.tolist()) == list(range(len(a)))
        keys = [a[i:i + h] for i in sa.tolist()]
        assert keys == sorted(keys), trial
        for k in range(1, len(a)):
            x, y = a[sa[k - 1]:], a[sa[k]:]
            common = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), min(len(x), len(y)))
            assert lcp[k] == min(common, depth), (trial, k)


@pytest.mark.parametrize("name", ["v300", "v2000-bytes"])
def test_sentencepiece_nbest(spm_models, name):
    ref = spm.SentencePieceProcessor(model_file=str(spm_models[name]))
    ours = UnigramTokenizer.from_sentencepiece(spm_models[name])
    for text in ["the cats", "Mädchen spielt", "unbelievable things", "Straße"]:
        theirs = ref.nbest_encode_as_ids(text, 5)
        mine = [ids for ids, _ in ours.nbest(text, 5)]
        scores = [s for _, s in ours.nbest(text, 5)]
        assert scores == sorted(scores, reverse=True)
        # Same set of segmentations; the order may differ only between equal scores.
        assert mine[0] == theirs[0]
        assert sorted(mine) == sorted(theirs), text


def test_our_model_files_load_in_sentencepiece(tmp_path):
    for opts in [dict(), dict(byte_fallback=True, normalization="identity", remove_extra_whitespaces=False)]:
        tok = UnigramTokenizer(special_tokens=["<pad>"], **opts).train(corpus()[:60_000], 400)
        path = tmp_path / "ours.model"
        tok.save_sentencepiece(path)
        ref = spm.SentencePieceProcessor(model_file=str(path))
        again = UnigramTokenizer.from_sentencepiece(path)
        for text in TEXTS:
            ids = tok.encode(text, disallowed_special=())
            assert ref.encode(text) == ids, text
            assert ref.decode(ids) == tok.decode(ids)
            assert again.encode(text, disallowed_special=()) == ids


def test_charsmap_compiled_here_reads_back():
    mapping = {"a": "b", "ab": "X", "é": "e", "ﬁ": "fi", "\t": " ", "\x01": ""}
    data = compile_charsmap(mapping)
    assert {k.decode(): v.decode() for k, v in decompile_charsmap(data).items()} == mapping
    n = Normalizer(data, add_dummy_prefix=False, remove_extra_whitespaces=False)
    assert n.apply_map("aab\x01ﬁé\t") == "bXfie "  # longest key first
    assert n.apply_map("aab\x01\t") == "bX "          # the same on ASCII text


# -- the lattice ----------------------------------------------------------------

def toy(byte_fallback=False):
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(p, s, 1) for p, s in [("▁", -2.0), ("▁c", -3.0), ("▁ca", -4.0), ("▁cat", -3.5), ("▁cats", -9.0),
                                      ("c", -3.0), ("a", -2.5), ("t", -2.5), ("s", -2.0), ("at", -3.2),
                                      ("ats", -4.1), ("ts", -4.4)]]
    if byte_fallback:
        pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    tok = UnigramTokenizer.from_dict({"normalization": "identity", "charsmap": "", "add_dummy_prefix": True,
                                      "remove_extra_whitespaces": True, "byte_fallback": byte_fallback,
                                      "pieces": [[p, s, {1: "normal", 2: "unknown", 3: "control", 6: "byte"}[t]]
                                                 for p, s, t in pieces]})
    return tok


def all_segmentations(tok, s):
    """Every way to cut s into pieces of the vocabulary (brute force), with its log-probability."""
    out = []
    for cuts in itertools.product([0, 1], repeat=len(s) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(s)]
        parts = [s[a:b] for a, b in zip(bounds, bounds[1:])]
        if all(p in tok._ids for p in parts):
            out.append(([tok.token_to_id(p) for p in parts], sum(tok.score(tok.token_to_id(p)) for p in parts)))
    return out


def test_viterbi_and_nbest_against_brute_force():
    tok = toy()
    segs = sorted(all_segmentations(tok, "▁cats"), key=lambda x: -x[1])
    assert tok.encode("cats") == segs[0][0]
    assert tok.pieces(tok.encode("cats")) == ["▁cat", "s"]
    got = tok.nbest("cats", 100)
    assert [ids for ids, _ in got] == [ids for ids, _ in segs]
    assert [s for _, s in got] == pytest.approx([s for _, s in segs])


def test_unknown_characters():
    tok = toy()
    assert tok.pieces(tok.encode("cxyzat")) == ["▁c", "<unk>", "at"]  # adjacent unknowns join
    assert tok.decode(tok.encode("cxyzat")) == "c \u2047 at"
    tb = toy(byte_fallback=True)
    assert tb.pieces(tb.encode("c€")) == ["▁c", "<0xE2>", "<0x82>", "<0xAC>"]
    assert tb.decode(tb.encode("cat € s")) == "cat € s"


def test_sampling_follows_the_distribution():
    tok = toy()
    alpha = 0.5
    segs = all_segmentations(tok, "▁cats")
    z = sum(math.exp(alpha * s) for _, s in segs)
    expected = {tuple(ids): math.exp(alpha * s) / z for ids, s in segs}
    rng = random.Random(0)
    n = 20000
    counts = Counter(tuple(tok.encode("cats", alpha=alpha, seed=rng)) for _ in range(n))
    for ids, p in expected.items():
        assert abs(counts[ids] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (tok.pieces(ids), p)
    assert tok.encode("cats cats", alpha=0.1, seed=3) == tok.encode("cats cats", alpha=0.1, seed=3)


# -- round trips, files, errors ---------------------------------------------------

@pytest.fixture(scope="module")
def lossless():
    return UnigramTokenizer(normalization="identity", byte_fallback=True, remove_extra_whitespaces=False,
                            special_tokens=["<|endoftext|>"]).train(corpus()[:60_000], 500)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_decode_encode_roundtrip_with_byte_fallback(lossless, text):
    # "▁" in the text is read as the space it stands for (as sentencepiece does), so it comes back as " "
    assert lossless.decode(lossless.encode(text, disallowed_special=())) == text.replace("▁", " ")


def test_special_tokens(lossless):
    eot = lossless.special_tokens["<|endoftext|>"]
    assert lossless.encode("a<|endoftext|>b", allowed_special="all").count(eot) == 1
    with pytest.raises(ScratchError, match="special token"):
        lossless.encode("a<|endoftext|>b")
    assert eot not in lossless.encode("a<|endoftext|>b", disallowed_special=())


def test_save_load_identical(lossless, tmp_path):
    lossless.save(tmp_path / "tok.json")
    again = load(tmp_path / "tok.json")
    assert isinstance(again, UnigramTokenizer)
    for text in TEXTS:
        assert again.encode(text, disallowed_special=()) == lossless.encode(text, disallowed_special=())


def test_bad_files(tmp_path, lossless):
    p = tmp_path / "m.model"
    for data in [b"", b"not a model at all \xff\xff\xff", b"\x0a\x05\x0a\x03abc\x0a\xff"]:
        p.write_bytes(data)
        with pytest.raises(ScratchError, match="m.model"):
            UnigramTokenizer.from_sentencepiece(p)
    lossless.save_sentencepiece(p)
    full = p.read_bytes()
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ScratchError, match="truncated|not a valid"):
        UnigramTokenizer.from_sentencepiece(p)
    with pytest.raises(ScratchError, match="does not exist"):
        UnigramTokenizer.from_sentencepiece(tmp_path / "missing.model")
    (tmp_path / "c.txt").write_text(corpus()[:20_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "bpe"), vocab_size=200,
                                   model_type="bpe", minloglevel=2)
    with pytest.raises(ScratchError, match="BPE model; only unigram"):
        UnigramTokenizer.from_sentencepiece(tmp_path / "bpe.model")
    j = tmp_path / "tok.json"
    lossless.save(j)
    j.write_text(j.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(ScratchError, match="version"):
        load(j)


# -- training ---------------------------------------------------------------------

def test_expected_counts_match_brute_force():
    from scratchllm.tokenizers.unigram_train import Lattices

    pieces = ["▁", "▁c", "▁ca", "▁cat", "c", "a", "t", "s", "at", "ats", "ts", "▁t", "ta"]
    logp = np.log(np.random.default_rng(0).dirichlet(np.ones(len(pieces))))
    index = {p: i for i, p in enumerate(pieces)}
    words, counts = ["▁cats", "▁tat", "atsx", "▁c"], [3.0, 1.0, 2.0, 5.0]
    unk = logp.min() - 10
    lat = Lattices(words, counts, index, 16)
    got, loglik = lat.expected_counts(logp, unk, len(pieces))
    want = np.zeros(len(pieces))
    want_ll = 0.0
    for w, n in zip(words, counts):
        segs = []
        for cuts in itertools.product([0, 1], repeat=len(w) - 1):
            b = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(w)]
            parts = [w[x:y] for x, y in zip(b, b[1:])]
            # a part is a piece, or one character that no piece covers (unknown)
            if all(p in index or (len(p) == 1 and p not in index) for p in parts):
                segs.append((parts, sum(logp[index[p]] if p in index else unk for p in parts)))
        z = sum(math.exp(s) for _, s in segs)
        want_ll += n * math.log(z)
        for parts, s in segs:
            for p in parts:
                if p in index:
                    want[index[p]] += n * math.exp(s) / z
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert loglik == pytest.approx(want_ll, rel=1e-12)


def quality(text, vocab, tmp_path, **ours_opts):
    """(tokens/char, log-likelihood/char) of ours and sentencepiece's on the last tenth of text."""
    lines = text.split("\n")
    cut = len(lines) * 9 // 10
    train, held = "\n".join(lines[:cut]), [ln for ln in lines[cut:] if ln.strip()]
    (tmp_path / "train.txt").write_text(train, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "ref"),
                                   vocab_size=vocab, minloglevel=2, num_threads=2)
    ref = UnigramTokenizer.from_sentencepiece(tmp_path / "ref.model")  # its pieces, our (identical) encoder
    ours = UnigramTokenizer().train(train, vocab, **ours_opts)
    out = []
    for tok in (ours, ref):
        scores = [tok.unk_score if i == tok.unk_id else tok.score(i) for i in range(tok.vocab_size)]
        n_tok = n_char = 0
        ll = 0.0
        for ln in held:
            ids = tok.encode(ln)
            n_tok += len(ids)
            n_char += len(ln)
            ll += sum(scores[i] for i in ids)
        out.append((n_tok / n_char, ll / n_char))
    return out


def test_training_quality_small(tmp_path):
    (ours_tpc, ours_ll), (ref_tpc, ref_ll) = quality(corpus()[:150_000], 600, tmp_path, workers=1)
    assert ours_tpc == pytest.approx(ref_tpc, rel=0.02)
    assert ours_ll == pytest.approx(ref_ll, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [4000, 8000])
@pytest.mark.parametrize("data", ["tinyshakespeare", "multi30k"])
def test_training_quality_against_sentencepiece(shared_data, tmp_path, data, vocab):
    import gzip

    if data == "tinyshakespeare":
        text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    else:
        text = gzip.open(shared_data / "multi30k" / "train.de.gz", "rt", encoding="utf-8").read()
    (ours_tpc, ours_ll), (ref_tpc, ref_ll) = quality(text, vocab, tmp_path)
    assert ours_tpc == pytest.approx(ref_tpc, rel=0.02)
    assert ours_ll == pytest.approx(ref_ll, rel=0.02)


def test_two_workers_learn_what_one_does():
    text = corpus()[:250_000]
    one = UnigramTokenizer().train(text, 800, workers=1)
    two = UnigramTokenizer().train(text, 800, workers=2)
    a = {one.id_to_token(i): one.score(i) for i in range(one.vocab_size)}
    b = {two.id_to_token(i): two.score(i) for i in range(two.vocab_size)}
    assert a.keys() == b.keys()
    assert [b[p] for p in a] == pytest.approx(list(a.values()), abs=1e-4)


@pytest.mark.parametrize("opts", [dict(), dict(byte_fallback=True),
                                  dict(normalization="identity", byte_fallback=True, remove_extra_whitespaces=False)])
def test_hugging_face_tokenizer_json(tmp_path, opts):
    hf_tokenizers = pytest.importorskip("tokenizers")
    tok = UnigramTokenizer(special_tokens=["<pad>"], **opts).train(corpus()[:100_000], 500)
    tok.save_hf(tmp_path)
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    back = load(tmp_path)
    assert isinstance(back, UnigramTokenizer)
    for text in TEXTS:
        ids = tok.encode(text, disallowed_special=())
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert back.encode(text, disallowed_special=()) == ids, text
        # HF writes <unk> as itself, and keeps a leading "▁" typed in the text as a space
        if tok.unk_id not in ids and not text.startswith("▁"):
            assert hf.decode(ids) == tok.decode(ids), text


def test_encode_batch_in_worker_processes(lossless):
    texts = [t for t in TEXTS if "<|endoftext|>" not in t] * 3
    assert lossless.encode_batch(texts, workers=2) == [lossless.encode(t) for t in texts]
    assert lossless.encode_batch(texts) == [lossless.encode(t) for t in texts]
    assert toy().encode_batch(["cxyzat", "a cat", ""]) == [toy().encode(t) for t in ["cxyzat", "a cat", ""]]
    with pytest.raises(ScratchError, match="special token"):
        lossless.encode_batch(["a", "<|endoftext|>"])
