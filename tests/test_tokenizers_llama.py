"""Tokenizers of today's models (SmolLM2, Llama 3, Qwen2, Llama 2-style SentencePiece BPE) and chat templates.

References: transformers reading the same GGUF file or directory, Hugging Face's `tokenizers` for
tokenizers built here with the published split patterns, and hand-worked expectations where
llama.cpp's rules (the runtime GGUF files are made for) differ from transformers'.
"""
import json
import sys
from pathlib import Path

import pytest

from scratchllm.errors import ScratchError
from scratchllm.tokenizers import PretrainedBPETokenizer, SentencePieceBPETokenizer, from_gguf, from_hf_dir, load
import smollm2_refs
from tokenizers_refs import VARIED_TEXTS

# Published split patterns, as the models' tokenizer.json files write them (not taken from our code).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = VARIED_TEXTS + [
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y <|im_start|><|im_start|>",
    "Prices: 12 apples, 345 pears, 6789 plums; x=10.5, y=-3",
    "tabs\tand  double  spaces,\n\n\nthree newlines, then 1 2  3   4",
    "Ünïcödé: ½ ² ③ ٣ ௧ — digits of other scripts",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me a joke 😀"},
     {"role": "assistant", "content": "Why did the café close?\nIt ran out of grounds."},
     {"role": "user", "content": "日本語で？  (two spaces)"}],
]


def _gguf_metadata(path):
    """The tokenizer.* metadata of a GGUF file, read by the `gguf` package."""
    gguf = pytest.importorskip("gguf")
    out = {}
    for k, f in gguf.GGUFReader(path).fields.items():
        if not k.startswith("tokenizer."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY and f.types[-1] == gguf.GGUFValueType.STRING:
            out[k] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]  # contents() is slow on 49k strings
        elif f.types[0] == gguf.GGUFValueType.ARRAY:
            out[k] = [f.parts[i].tolist()[0] for i in f.data]
        else:
            out[k] = f.contents()
    return out


@pytest.fixture(scope="module")
def smol_path():
    return smollm2_refs.path()


@pytest.fixture(scope="module")
def smol(smol_path):
    from scratchllm import gguf  # its metadata agrees with the gguf package's (tests/test_gguf*.py)
    return from_gguf(gguf.read(smol_path, lazy=True)[0])


@pytest.fixture(scope="module")
def smol_ref(smol_path):
    return smollm2_refs.hf_tokenizer()  # shared by the test session: do not change it


@pytest.fixture(scope="module")
def smol_true_ref(smol_ref):
    """transformers' tokenizer with SmolLM2's own pre-tokenizer (its tokenizer.json on the Hub, and
    llama.cpp's "smollm"): digits cut out one by one, then GPT-2's split. Reading the GGUF file,
    transformers knows no "smollm" and splits with GPT-2's pattern alone."""
    from tokenizers import pre_tokenizers
    ref = copy_tokenizer(smol_ref)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return ref


def copy_tokenizer(ref):
    import copy
    return copy.deepcopy(ref)


def _ws_before_digit(text: str) -> bool:
    return any(a.isspace() and b.isnumeric() for a, b in zip(text, text[1:]))


# -- SmolLM2 from its GGUF file ------------------------------------------------------------------

def test_smollm2_gguf_ids_equal_transformers(smol, smol_ref, smol_true_ref):
    assert smol.vocab_size == len(smol_ref) == 49152
    for text in TEXTS:
        ours = smol.encode(text)
        assert ours == smol_true_ref.encode(text), text
        if not _ws_before_digit(text):  # the only place where GPT-2's split alone differs
            assert ours == smol_ref.encode(text), text


def test_smollm2_digits_split_as_llama_cpp(smol):
    # "a  1": digits first ("a  ", "1"), then GPT-2's split keeps the two spaces together ("a", "  "),
    # and "  " is one token, where GPT-2's split alone gives "a", " ", " 1" -> a, Ġ, Ġ, 1.
    two_spaces = smol.token_to_id("ĠĠ")
    assert smol.encode("a  1") == [smol.token_to_id("a"), two_spaces, smol.token_to_id("1")]
    assert smol.encode("12345") == [smol.token_to_id(c) for c in "12345"]


def test_smollm2_whole_corpus_equal_tokenizers(smol, smol_true_ref, shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    ids = smol.encode(text)
    assert ids == smol_true_ref.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert smol.decode(ids) == text


def test_smollm2_decode_round_trip(smol, smol_ref):
    for text in TEXTS:
        ids = smol.encode(text)
        assert smol.decode(ids) == text
        assert smol.decode(ids) == smol_ref.decode(ids, clean_up_tokenization_spaces=False)
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>")
    assert smol.decode(ids, skip_special_tokens=True) == smol_ref.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_smollm2_special_tokens(smol, smol_ref):
    assert (smol.bos_token, smol.eos_token) == (smol_ref.bos_token, smol_ref.eos_token) == ("<|im_start|>",
                                                                                             "<|im_end|>")
    assert (smol.bos_token_id, smol.eos_token_id) == (1, 2)
    assert smol.add_bos_token is False
    assert smol.encode("hi") == smol_ref.encode("hi")  # no bos added
    assert {0, 2} <= smol.stop_token_ids
    # Special tokens' text as plain text on request.
    assert 1 not in smol.encode("<|im_start|>", parse_special=False)
    # BPETokenizer's spelling: allowed_special picks which special tokens' text becomes their id.
    assert smol.encode("<|im_start|><|im_end|>", allowed_special={"<|im_end|>"}) == \
        smol.encode("<|im_start|>", parse_special=False) + [2]
    assert smol.encode("<|im_start|>", allowed_special="all", disallowed_special=()) == [1]
    assert smol.encode("<|im_start|>", allowed_special=()) == smol.encode("<|im_start|>", parse_special=False)


@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_chat_template_equal_transformers(smol, smol_ref, gen):
    pytest.importorskip("jinja2")
    for conv in CONVERSATIONS:
        text = smol.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
        assert text == smol_ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
        ref_ids = smol_ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=True, return_dict=False)
        assert smol.apply_chat_template(conv, add_generation_prompt=gen) == list(ref_ids)
    assert text.endswith("<|im_end|>\n") != gen


TEMPLATES = [
    # tojson keeps non-ASCII and does not escape <, > and & for HTML
    "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}",
    # loop controls, namespace, whitespace control, trim_blocks / lstrip_blocks
    "{% set ns = namespace(n=0) %}\n{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n"
    "{% set ns.n = ns.n + 1 %}{{ ns.n }}. {{- m['content'] }}\n{% endfor %}\n{{ bos_token }}{{ eos_token }}",
    # the generation tag of templates that mark the assistant's tokens
    "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}>>{% endif %}",
    "{{ tools is none }} {{ documents is none }} {{ (strftime_now('%Y') | length) == 4 }}",
]


@pytest.mark.parametrize("k", range(len(TEMPLATES)))
def test_template_rendering_equal_transformers(smol, smol_ref, k):
    pytest.importorskip("jinja2")
    conv = CONVERSATIONS[2] + [{"role": "user", "content": "<b>&'quotes\"</b> 😀 ünï"}]
    for gen in (True, False):
        ours = smol.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False, chat_template=TEMPLATES[k])
        assert ours == smol_ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False,
                                                    chat_template=TEMPLATES[k])


# -- Hugging Face directories --------------------------------------------------------------------

def test_smollm2_hf_dir_equal_transformers(smol_ref, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    smol_ref.save_pretrained(tmp_path)
    ours = from_hf_dir(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(ours, PretrainedBPETokenizer)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
    for conv in CONVERSATIONS:
        assert (ours.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
                == ref.apply_chat_template(conv, add_generation_prompt=True, tokenize=False))
        assert ours.apply_chat_template(conv, add_generation_prompt=False) == list(
            ref.apply_chat_template(conv, add_generation_prompt=False, return_dict=False))


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TRAIN_TEXT = ("The quick brown fox jumps over the lazy dog. I'm sure we'll see 12345 apples and 6789 pears!\n"
              "def f(x):\n    return x ** 2\n\nCafé naïve résumé. 日本語のテキスト。 emoji 😀😀 ") * 20


def _build_hf_dir(d: Path, split: str, nfc: bool, ignore_merges: bool, bos_in_template: bool):
    """A small Llama 3 / Qwen2 style tokenizer trained by `tokenizers`, saved as a model directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    tok.add_tokens(["<think>"])  # an added token that is not special
    if bos_in_template:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    d.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = ignore_merges
    (d / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False}
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return Tokenizer.from_file(str(d / "tokenizer.json"))


FAMILIES = {"llama3": dict(split=LLAMA3_SPLIT, nfc=False, ignore_merges=True, bos_in_template=True),
            "qwen2": dict(split=QWEN2_SPLIT, nfc=True, ignore_merges=False, bos_in_template=False)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_patterns_hf_dir_equal_tokenizers(family, tmp_path):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    ref = _build_hf_dir(tmp_path, **FAMILIES[family])
    ours = from_hf_dir(tmp_path)
    texts = TEXTS + ["<think>why</think> 12 345 6789", "e\u0301 NFC: \u212b vs \u00c5", "<|eot_id|><|eot_id|>x"]
    for text in texts:
        assert ours.encode(text) == ref.encode(text).ids, text
    assert ours.add_bos_token == (family == "llama3")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in texts[:10]:
        assert ours.encode(text) == hf.encode(text), text
    pytest.importorskip("jinja2")
    for conv in CONVERSATIONS:
        for gen in (True, False):
            assert (ours.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
                    == hf.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False))
            assert (ours.apply_chat_template(conv, add_generation_prompt=gen)
                    == list(hf.apply_chat_template(conv, add_generation_prompt=gen, return_dict=False)))


@pytest.mark.parametrize("family,pre", [("llama3", "llama-bpe"), ("qwen2", "qwen2")])
def test_family_patterns_from_gguf_names(family, pre, tmp_path):
    """A GGUF file names its split pattern; llama-bpe and qwen2 must split as those tokenizer.json files do."""
    pytest.importorskip("tokenizers")
    ref = _build_hf_dir(tmp_path, **FAMILIES[family])
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    added = {a["content"]: a for a in data["added_tokens"]}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    tokens = sorted(vocab, key=vocab.get)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [(3 if added[t]["special"] else 4) if t in added else 1 for t in tokens],
            "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]],
            "tokenizer.ggml.bos_token_id": vocab["<|begin_of_text|>"],
            "tokenizer.ggml.eos_token_id": vocab["<|eot_id|>"]}
    ours = from_gguf(meta)
    texts = [t for t in TEXTS if t == __import__("unicodedata").normalize("NFC", t)]  # GGUF files carry no NFC
    for text in texts:
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids, text
    assert ours.add_bos_token == (pre == "llama-bpe")  # llama.cpp's default for llama-bpe when the file is silent


def test_save_hf_read_back_by_transformers(smol, tmp_path):
    """Our export of an imported tokenizer: transformers reads the same ids and chat template."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    texts = TEXTS[:6] + TEXTS[-6:]
    llama = from_hf_dir(_build_hf_dir_and_return_dir(tmp_path / "llama3", **FAMILIES["llama3"]))
    qwen = from_hf_dir(_build_hf_dir_and_return_dir(tmp_path / "qwen2", **FAMILIES["qwen2"]))
    for name, ours in (("smol", smol), ("llama3", llama), ("qwen2", qwen)):
        ours.save_hf(tmp_path / f"{name}-out")
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path / f"{name}-out")
        for text in texts:
            assert hf.encode(text) == ours.encode(text), (name, text)
        conv = CONVERSATIONS[2]
        assert list(hf.apply_chat_template(conv, add_generation_prompt=True, return_dict=False)) == \
            ours.apply_chat_template(conv, add_generation_prompt=True)


def _build_hf_dir_and_return_dir(d, **kw):
    _build_hf_dir(d, **kw)
    return d


@pytest.mark.parametrize("pattern", ["smollm", "llama3", "qwen2"])
def test_train_with_family_patterns(pattern, tmp_path):
    """Our own BPE trained with a family's split (a sequence of patterns for smollm): saved and read
    back, and written for Hugging Face, where `tokenizers` splits and merges it the same way."""
    from scratchllm.tokenizers import BPETokenizer
    tokenizers = pytest.importorskip("tokenizers")
    tok = BPETokenizer(pattern=pattern, special_tokens=["<|endoftext|>"]).train(TRAIN_TEXT, 370)
    tok.save(tmp_path / "ours.json")
    back = load(tmp_path / "ours.json")
    assert back.pattern == tok.pattern and back.to_dict()["pattern_name"] == pattern
    tok.save_hf(tmp_path / "hf")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    for text in TEXTS:
        if "<|" in text:
            continue
        ids = tok.encode(text)
        assert back.encode(text) == ids
        assert ref.encode(text).ids == ids, text


def test_ignore_merges_takes_a_whole_token(tmp_path):
    """Llama 3's ignore_merges: a pre-token that is a token is taken whole, even where the merges
    would not build it ("abc" here: b+c merges first, and no merge joins a with bc)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers
    from scratchllm.tokenizers.byte_level import BYTE_TO_CHAR
    vocab = {BYTE_TO_CHAR[b]: i for i, b in enumerate(range(256))}
    for t in ("bc", "ab", "abc"):
        vocab[t] = len(vocab)
    merges = [("b", "c"), ("a", "b"), ("ab", "c")]
    for ignore in (False, True):
        ref = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore))
        ref.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        ref.decoder = decoders.ByteLevel()
        ref.save(str(tmp_path / "tokenizer.json"))
        ours = from_hf_dir(tmp_path)
        for text in ("abc", "abc abcabc", "xabc", "ab"):
            assert ours.encode(text) == ref.encode(text).ids, (ignore, text)
        assert (ours.encode("abc") == [vocab["abc"]]) == ignore


def test_sentencepiece_bpe_hf_dir_equal_tokenizers(tmp_path):
    """A Llama 2 / Mistral style tokenizer.json: BPE over pieces with byte fallback, ranked merges."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for p in SPM_NORMAL:
        vocab[p] = len(vocab)
    merges = []  # every split of a piece into two pieces, the pieces in vocabulary order (best first)
    for p in SPM_NORMAL:
        merges += [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
    ref = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                          fuse_unk=True))
    ref.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    ref.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    ref.add_special_tokens(["<unk>", "<s>", "</s>"])
    ref.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "add_bos_token": False}))
    ours = from_hf_dir(tmp_path)
    assert isinstance(ours, SentencePieceBPETokenizer)
    for text in SPM_TEXTS + [" hello", "  the", "a</s>b", "</s>hello"]:
        ids = ours.encode(text)
        assert ids == ref.encode(text).ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), text


# -- SentencePiece BPE ("llama" GGUF vocabularies) ------------------------------------------------

SPM_NORMAL = ["▁", "e", "h", "l", "o", "t", "w", "r", "d", "a", "n", "é", "中", "he", "ll", "▁t", "▁th", "▁the",
              "llo", "hello", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "an", "▁an", "▁and", "▁▁", "▁▁▁", "er",
              "▁he"]


def _write_spm_gguf(path: Path):
    gguf = pytest.importorskip("gguf")
    import numpy as np
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    pieces += [(p, -float(k), 1) for k, p in enumerate(SPM_NORMAL)]  # distinct scores: no ties to break
    pieces.append(("<tool>", 0.0, 4))
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([t for _, _, t in pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
                        "{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((len(pieces), 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [p for p, _, _ in pieces]


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    pieces = _write_spm_gguf(d / "tiny.gguf")
    return d, pieces, from_gguf(_gguf_metadata(d / "tiny.gguf"))


SPM_TEXTS = ["hello world", "the hello and", "héllo 中文 😀", "", "hello\nworld", "trailing  ", "hello  world",
             "wor ld", "hellohello the"]


def test_spm_gguf_equal_transformers(spm):
    transformers = pytest.importorskip("transformers")
    d, pieces, ours = spm
    assert isinstance(ours, SentencePieceBPETokenizer)
    ref = transformers.AutoTokenizer.from_pretrained(d, gguf_file="tiny.gguf")
    for text in SPM_TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True) == text


def test_spm_by_hand(spm):
    _, pieces, ours = spm
    idx = {p: i for i, p in enumerate(pieces)}
    # "hello world": "▁hello" outscores everything inside it; "▁world" likewise.
    assert ours.encode("hello world") == [1, idx["▁hello"], idx["▁world"]]
    # Highest score first: "he" (score -13) before "ll" (-14), then "llo" (-18), "hello" (-19), "▁hello" (-20).
    assert ours.encode("hello", add_special_tokens=False) == [idx["▁hello"]]
    # No piece for "😀": its four UTF-8 bytes, one byte token each.
    emoji_bytes = [idx[f"<0x{b:02X}>"] for b in "😀".encode()]
    assert ours.encode("😀", add_special_tokens=False) == [idx["▁"]] + emoji_bytes
    # llama.cpp puts the space in front at the start and after every special token, also before a space.
    assert ours.encode("<tool>hello", add_special_tokens=False) == [idx["<tool>"], idx["▁hello"]]
    assert ours.encode(" hello", add_special_tokens=False) == [idx["▁"], idx["▁hello"]]
    assert ours.decode([idx["▁"], idx["▁hello"]]) == " hello"
    assert ours.encode("a</s>b", add_special_tokens=False) == [idx["▁"], idx["a"], 2, idx["▁"], idx["<0x62>"]]
    assert ours.pieces([idx["<0x0A>"], idx["▁the"]]) == ["'\\n'", "' the'"]


def test_spm_scores_equal_sentencepiece(shared_data):
    """A SentencePiece BPE model trained by sentencepiece, given to from_gguf as a "llama" vocabulary
    (pieces, scores, types): the same ids as sentencepiece's own encoder on Shakespeare and more."""
    spm = pytest.importorskip("sentencepiece")
    import io
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text[:200_000].splitlines()), model_writer=buf,
                                   model_type="bpe", vocab_size=1000, byte_fallback=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   user_defined_symbols=["<tool>"], minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else
             4 if sp.id_to_piece(i) == "<tool>" else 1 for i in range(n)]
    ours = from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
                      "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)], "tokenizer.ggml.token_type": types,
                      "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
                      "tokenizer.ggml.unknown_token_id": sp.unk_id(), "tokenizer.ggml.add_bos_token": False})
    lines = text[200_000:260_000].splitlines() + [t for t in TEXTS if "<" not in t]
    for line in lines:
        assert ours.encode(line) == sp.encode(line), line
        assert ours.decode(ours.encode(line)) == sp.decode(sp.encode(line))


def test_spm_piece_across_a_space():
    """A piece holding "▁" after another character ("a▁b") may join across a space, so words are not
    merged one by one there: "a b" is "▁a▁b": a+▁ (score -4) first, then a▁+b."""
    pieces = ["<unk>", "\u2581", "a", "b", "a\u2581", "a\u2581b"]
    tok = SentencePieceBPETokenizer(pieces, [2, 1, 1, 1, 1, 1], scores=[0, -1, -2, -3, -4, -5], unk_token="<unk>")
    assert tok.encode("a b") == [1, 5]
    assert tok.encode("b a b") == [1, 3, 1, 5]
    assert tok.decode([1, 3, 1, 5]) == "b a b"
    assert tok.encode_batch(["a b", "b a b", "b"], workers=2) == [[1, 5], [1, 3, 1, 5], [1, 3]]


def test_spm_chat_template_and_save_load(spm, tmp_path):
    pytest.importorskip("jinja2")
    _, pieces, ours = spm
    conv = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the world"}]
    assert ours.apply_chat_template(conv, tokenize=False) == "<s>[user] hello</s>[assistant] the world</s>"
    ours.save(tmp_path / "tokenizer.json")
    back = load(tmp_path / "tokenizer.json")
    assert isinstance(back, SentencePieceBPETokenizer)
    for text in SPM_TEXTS + [" hello", "<tool>x</s>"]:
        assert back.encode(text) == ours.encode(text)
    assert back.apply_chat_template(conv) == ours.apply_chat_template(conv)
    # Written for Hugging Face: transformers reads the same ids (the space in front after a special
    # token too: the Prepend normalizer runs on each stretch between added tokens) and chat template.
    transformers = pytest.importorskip("transformers")
    ours.save_hf(tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in SPM_TEXTS + [" hello", "<tool>hello</s>the", "a</s>b"]:
        assert hf.encode(text) == ours.encode(text), text
        assert hf.decode(ours.encode(text)) == ours.decode(ours.encode(text)), text
    assert list(hf.apply_chat_template(conv, return_dict=False)) == ours.apply_chat_template(conv)
    again = from_hf_dir(tmp_path / "hf")
    for text in SPM_TEXTS + [" hello", "<tool>hello</s>the"]:
        assert again.encode(text) == ours.encode(text), text


# -- saving, errors ------------------------------------------------------------------------------

def test_smollm2_save_load_keeps_everything(smol, tmp_path):
    smol.save(tmp_path / "tokenizer.json")
    back = load(tmp_path / "tokenizer.json")
    assert isinstance(back, PretrainedBPETokenizer)
    for text in TEXTS:
        assert back.encode(text) == smol.encode(text)
    assert back.chat_template == smol.chat_template
    assert back.special_tokens == smol.special_tokens
    assert (back.bos_token_id, back.eos_token_id, back.add_bos_token) == (1, 2, False)
    assert back.pattern == smol.pattern
    pytest.importorskip("jinja2")
    assert back.apply_chat_template(CONVERSATIONS[2]) == smol.apply_chat_template(CONVERSATIONS[2])
    assert from_hf_dir(tmp_path).to_dict() == smol.to_dict()  # a folder holding our file reads as ours


def test_unsupported_hf_model_type(tmp_path):
    data = {"model": {"type": "WordPiece", "vocab": {"a": 0}}, "pre_tokenizer": None, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ScratchError) as e:
        from_hf_dir(tmp_path)
    assert "WordPiece" in str(e.value) and "supported" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ScratchError, match="no tokenizer.json"):
        from_hf_dir(tmp_path / "nothing")


def test_unsupported_gguf_vocabularies():
    base = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": []}
    with pytest.raises(ScratchError, match="'bert'.*supported: 'gpt2'"):
        from_gguf({**base, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ScratchError, match="pre-tokenizer 'made-up'"):
        from_gguf({**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "made-up"})
    with pytest.raises(ScratchError, match="no tokenizer.ggml.model"):
        from_gguf({})
    byte_tokens = [chr(c) for c in range(33, 127)]  # not all 256 bytes, and a merge naming no token
    with pytest.raises(ScratchError, match="GGUF file's vocabulary cannot be read: the merge"):
        from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": byte_tokens,
                   "tokenizer.ggml.merges": ["a b"]})


def test_template_errors_are_one_line(smol):
    pytest.importorskip("jinja2")
    bad = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(ScratchError, match="failed to render.*must start with user"):
        smol.apply_chat_template([{"role": "assistant", "content": "x"}], chat_template=bad)
    with pytest.raises(ScratchError, match="not a valid Jinja template"):
        smol.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% for %}")
    with pytest.raises(ScratchError, match="list of dicts"):
        smol.apply_chat_template("hello")


def test_jinja2_missing_is_one_line(smol, monkeypatch):
    from scratchllm.tokenizers import chat_template
    chat_template._compile.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ScratchError, match=r'pip install -e "\.\[chat\]"'):
        smol.apply_chat_template([{"role": "user", "content": "x"}])
    chat_template._compile.cache_clear()
