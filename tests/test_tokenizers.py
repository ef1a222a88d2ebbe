"""What every tokenizer must do: lossless round trips, files, the shared API."""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scratchllm.errors import ScratchError
from scratchllm.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, UnigramTokenizer, load
from tokenizers_refs import VARIED_TEXTS, ours_gpt2

# A small multilingual training text, so trained vocabularies hold tokens
# of several scripts and of code.
TRAIN_TEXT = "\n".join(VARIED_TEXTS[1:21]) * 3 + "\nthe cat sat, the cats sat, a cat's hat; the mat.\n" * 20

BPE_KINDS = ["bpe-gpt2", "bpe-gpt4", "bpe-none", "bpe-gpt2-ranks", "gpt2-files"]
# Lossless: decode(encode(text)) == text for any text, special tokens included.
LOSSLESS_KINDS = BPE_KINDS + ["unigram"]
_trained: dict = {}


def make(kind, shared=None):
    """A tokenizer of the given kind (trained ones are made once)."""
    if kind == "gpt2-files":
        if shared is None:
            pytest.skip("needs the shared GPT-2 files")
        return ours_gpt2(shared / "gpt2")
    if kind not in _trained:
        if kind == "char":
            _trained[kind] = CharTokenizer.from_text(TRAIN_TEXT)
        elif kind == "char-unk":
            _trained[kind] = CharTokenizer.from_text(TRAIN_TEXT, unk=True)
        elif kind == "unigram":  # lossless: no normalisation, bytes for unknown characters
            tok = UnigramTokenizer(normalization="identity", byte_fallback=True, remove_extra_whitespaces=False,
                                   special_tokens=["<|endoftext|>", "<pad>"])
            _trained[kind] = tok.train(TRAIN_TEXT, 480)
        elif kind == "unigram-nfkc":  # sentencepiece's defaults
            _trained[kind] = UnigramTokenizer().train(TRAIN_TEXT, 200)
        else:
            pattern = kind.split("-")[1]
            rule = "ranks" if kind.endswith("ranks") else "pairs"
            tok = BPETokenizer(pattern, special_tokens=["<|endoftext|>", "<pad>"], merge_rule=rule)
            _trained[kind] = tok.train(TRAIN_TEXT, 400)
    return _trained[kind]


@pytest.fixture(params=["char", "char-unk"] + BPE_KINDS + ["unigram", "unigram-nfkc"])
def tok(request):
    shared = None
    if request.param == "gpt2-files":
        shared = request.getfixturevalue("shared_data")
    return make(request.param, shared)


@pytest.fixture(params=BPE_KINDS)
def bpe(request):
    shared = request.getfixturevalue("shared_data") if request.param == "gpt2-files" else None
    return make(request.param, shared)


@pytest.fixture(params=LOSSLESS_KINDS)
def lossless(request):
    shared = request.getfixturevalue("shared_data") if request.param == "gpt2-files" else None
    return make(request.param, shared)


# Text that stresses byte-level BPE: any character (emoji, CJK, combining
# marks, controls ...) mixed with long whitespace runs and special tokens' text.
WEIRD = st.lists(st.one_of(
    st.text(max_size=20),
    st.text(alphabet=" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000", min_size=1, max_size=80),
    st.sampled_from(["😀", "👨‍👩‍👧", "e\u0301", "漢字", "\x00", "\U0010ffff", "'s", "<|endoftext|>", "12345", "▁"]),
), max_size=12).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=WEIRD)
def test_round_trip_any_unicode(lossless, text):
    ids = lossless.encode(text, disallowed_special=())
    assert all(isinstance(i, int) and 0 <= i < lossless.vocab_size for i in ids)
    # unigram reads "▁" in the text as the space it stands for (as sentencepiece does)
    assert lossless.decode(ids) == (text if isinstance(lossless, BPETokenizer) else text.replace("▁", " "))
    if isinstance(lossless, BPETokenizer):
        assert b"".join(lossless.token_bytes(i) for i in ids) == text.encode("utf-8")


@settings(max_examples=60, deadline=None)
@given(text=WEIRD, extra=st.text(max_size=5))
def test_char_round_trip_any_unicode(text, extra):
    tok = CharTokenizer.from_text(text + extra)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text + extra))


def test_lone_surrogates_round_trip(lossless):
    text = "a\ud800b\udfff"  # not valid Unicode, but a Python str all the same
    assert lossless.decode(lossless.encode(text)) == text


def test_special_tokens_shared(lossless):
    eot = lossless.token_to_id("<|endoftext|>")
    text = "a cat<|endoftext|>the mat"
    with pytest.raises(ScratchError, match="special token"):
        lossless.encode(text)
    ids = lossless.encode(text, allowed_special="all")
    assert ids.count(eot) == 1
    # BPE writes a special token's text back; unigram drops it, as sentencepiece drops control pieces
    assert lossless.decode(ids) == (text if isinstance(lossless, BPETokenizer) else "a cat the mat")
    assert ids == lossless.encode(text, allowed_special={"<|endoftext|>"})
    plain = lossless.encode(text, disallowed_special=())
    assert eot not in plain and lossless.decode(plain) == text


def test_api_shared_by_all(tok, tmp_path):
    text = "the cat sat"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "", text]) == [ids, [], ids]
    for i in range(tok.vocab_size):
        assert tok.token_to_id(tok.id_to_token(i)) == i
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "scratchllm-tokenizer" and data["version"] == 1
    again = Tokenizer.load(path)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    for t in VARIED_TEXTS[1:6]:
        assert again.encode(t) == tok.encode(t)
    assert load(path).encode(text) == ids


def test_save_load_identical_on_varied_text(bpe, tmp_path):
    bpe.save(tmp_path / "t.json")
    again = BPETokenizer.load(tmp_path / "t.json")
    assert again.merge_rule == bpe.merge_rule and again.special_tokens == bpe.special_tokens
    for t in VARIED_TEXTS + [TRAIN_TEXT]:
        assert again.encode(t, allowed_special="all") == bpe.encode(t, allowed_special="all")


def test_encode_batch_in_processes(lossless):
    texts = VARIED_TEXTS * 3
    assert lossless.encode_batch(texts, workers=2, disallowed_special=()) == \
        [lossless.encode(t, disallowed_special=()) for t in texts]


def test_bad_ids_are_clear_errors(tok):
    with pytest.raises(ScratchError, match="out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ScratchError, match="out of range"):
        tok.decode([-1])


# -- files: versions and corruption ------------------------------------------

def test_other_version_and_corrupt_files(tmp_path):
    tok = make("bpe-gpt2")
    path = tmp_path / "t.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))

    def write(obj_or_text):
        path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text), encoding="utf-8")
        return path

    with pytest.raises(ScratchError, match="version 2"):
        Tokenizer.load(write({**data, "version": 2}))
    with pytest.raises(ScratchError, match="broken JSON at line"):
        Tokenizer.load(write(json.dumps(data)[:-20]))
    with pytest.raises(ScratchError, match="neither a scratchllm tokenizer file nor"):
        Tokenizer.load(write({"hello": 1}))
    with pytest.raises(ScratchError, match="unknown tokenizer type"):
        Tokenizer.load(write({**data, "type": "wordpiece"}))
    with pytest.raises(ScratchError, match="corrupt"):
        Tokenizer.load(write({**data, "merges": data["merges"] + ["x y z"]}))
    with pytest.raises(ScratchError, match="corrupt"):
        Tokenizer.load(write({**data, "vocab": {**data["vocab"], "Ġthe": 0}}))
    with pytest.raises(ScratchError, match="corrupt"):
        Tokenizer.load(write({k: v for k, v in data.items() if k != "vocab"}))
    with pytest.raises(ScratchError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.json")
    make("char").save(path)
    with pytest.raises(ScratchError, match="holds a char tokenizer"):
        BPETokenizer.load(path)


# -- CharTokenizer -------------------------------------------------------------

def test_char_tokenizer_by_hand():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode([3, 2, 4, 4, 5]) == "hello"


def test_char_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ScratchError, match=r"'z' \(U\+007A\) at position 1 .* unk=True"):
        tok.encode("az")
    unk = CharTokenizer.from_text("abc", unk=True)
    assert unk.vocab_size == 4 and unk.id_to_token(3) == "<unk>" and unk.token_to_id("<unk>") == 3
    assert unk.encode("azb") == [0, 3, 1]
    assert unk.decode(unk.encode("azb")) == "a\ufffdb"


def test_char_vocab_size_keeps_most_frequent():
    tok = CharTokenizer(unk=True).train("aaabbc", vocab_size=3)
    assert tok.chars == ["a", "b"] and tok.encode("abc") == [0, 1, 2]
    with pytest.raises(ScratchError, match="unk=True"):
        CharTokenizer().train("aaabbc", vocab_size=2)


def test_training_streams_files_and_iterables(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text(TRAIN_TEXT, encoding="utf-8")
    whole = BPETokenizer("gpt2").train(TRAIN_TEXT, 300)
    from_file = BPETokenizer("gpt2").train(f, 300)
    with open(f, encoding="utf-8") as fh:
        from_lines = BPETokenizer("gpt2").train(fh, 300)
    assert from_file.merges == whole.merges == from_lines.merges
    assert CharTokenizer().train(f).chars == CharTokenizer.from_text(TRAIN_TEXT).chars
