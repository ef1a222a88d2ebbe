"""GPT-2's tokenizer from OpenAI's files: identical ids to tiktoken; HF files both ways."""
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scratchllm.errors import ScratchError
from scratchllm.tokenizers import BPETokenizer, GPT4_PATTERN, load
from tokenizers_refs import VARIED_TEXTS, ours_gpt2, tiktoken_gpt2, tiktoken_like, tiktoken_pattern

SLOW_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture
def gpt2_dir(shared_data):
    return shared_data / "gpt2"


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_same_ids_as_tiktoken(gpt2_dir, text):
    ours, ref = ours_gpt2(gpt2_dir), tiktoken_gpt2(gpt2_dir)
    assert ours.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special={"<|endoftext|>"}) == ref.encode(text, allowed_special={"<|endoftext|>"})
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours.decode(ref.encode(text, allowed_special="all")) == ref.decode(ref.encode(text, allowed_special="all"))


def test_special_token_text_is_refused_unless_allowed(gpt2_dir):
    ours, ref = ours_gpt2(gpt2_dir), tiktoken_gpt2(gpt2_dir)
    text = "end<|endoftext|>"
    with pytest.raises(ValueError):
        ref.encode(text)
    with pytest.raises(ScratchError, match="allowed_special"):
        ours.encode(text)
    assert ours.encode(text, allowed_special="all")[-1] == 50256
    assert 50256 not in ours.encode(text, disallowed_special=())
    with pytest.raises(ScratchError, match="not a special token"):
        ours.encode(text, allowed_special={"<pad>"})


def test_same_ids_as_tiktoken_on_shakespeare(gpt2_dir, shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert ours_gpt2(gpt2_dir).encode(text) == tiktoken_gpt2(gpt2_dir).encode(text)


def test_vocabulary_matches_the_files(gpt2_dir):
    ours = ours_gpt2(gpt2_dir)
    encoder = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
    assert ours.vocab_size == len(encoder) == 50257
    assert all(ours.token_to_id(s) == i for s, i in encoder.items())
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    ref = tiktoken_gpt2(gpt2_dir)
    assert all(ours.token_bytes(i) == ref.decode_single_token_bytes(i) for i in range(0, 50257, 97))


ANY_TEXT = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
    ["  ", "\n\n", " \n ", "'s", "'LL", "123456", "😀", "\u00a0", "<|endoftext|>", "\r\n"])), max_size=10).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_HEALTH)
@given(text=ANY_TEXT)
def test_same_ids_as_tiktoken_fuzzed(gpt2_dir, text):
    ours, ref = ours_gpt2(gpt2_dir), tiktoken_gpt2(gpt2_dir)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


# -- the GPT-4 pattern against tiktoken, with a vocabulary trained here ---------

@pytest.fixture(scope="module")
def gpt4_ranks_tokenizer():
    text = "\n".join(VARIED_TEXTS) * 4 + " 1234567 'S 'll Don'T\r\n\r\n  x" * 10
    trained = BPETokenizer("gpt4", special_tokens=["<|endoftext|>"]).train(text, 500)
    # The same vocabulary read with tiktoken's rule, against tiktoken itself.
    state = trained.to_dict()
    return BPETokenizer.from_parts(state["vocab"], state["merges"], trained.special_tokens, "gpt4", "ranks")


@settings(max_examples=100, deadline=None, suppress_health_check=SLOW_HEALTH)
@given(text=ANY_TEXT)
def test_gpt4_pattern_same_ids_as_tiktoken(gpt4_ranks_tokenizer, text):
    ref = tiktoken_like(gpt4_ranks_tokenizer, tiktoken_pattern("cl100k"))
    assert gpt4_ranks_tokenizer.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_gpt4_pattern_same_ids_as_tiktoken_varied(gpt4_ranks_tokenizer, text):
    ref = tiktoken_like(gpt4_ranks_tokenizer, tiktoken_pattern("cl100k"))
    assert gpt4_ranks_tokenizer.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


# -- Hugging Face files --------------------------------------------------------

def test_reads_a_hf_gpt2_tokenizer_dir(gpt2_dir, tmp_path):
    from transformers import GPT2TokenizerFast

    hf = GPT2TokenizerFast(vocab=str(gpt2_dir / "encoder.json"), merges=str(gpt2_dir / "vocab.bpe"))
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path)  # tokenizer.json
    assert ours.merge_rule == "pairs" and ours.vocab_size == 50257
    # HF GPT-2 model repos also ship vocab.json + merges.txt: GPT-2's two files renamed.
    pair_dir = tmp_path / "pair_files"
    pair_dir.mkdir()
    shutil.copy(gpt2_dir / "encoder.json", pair_dir / "vocab.json")
    shutil.copy(gpt2_dir / "vocab.bpe", pair_dir / "merges.txt")
    from_pair_files = load(pair_dir)
    ref = tiktoken_gpt2(gpt2_dir)
    for text in VARIED_TEXTS:
        expected = hf(text)["input_ids"]
        ids = ours.encode(text, allowed_special="all")
        assert ids == expected == from_pair_files.encode(text, allowed_special="all")
        assert ids == ref.encode(text, allowed_special="all")


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "none"])
def test_written_hf_files_load_in_hf(pattern, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    text = "\n".join(VARIED_TEXTS) * 3
    ours = BPETokenizer(pattern, special_tokens=["<|endoftext|>"]).train(text, 450)
    ours.save_hf(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tmp_path)
    back = load(tmp_path)
    for t in VARIED_TEXTS:
        ids = ours.encode(t, allowed_special="all")
        assert hf.encode(t).ids == ids
        assert auto(t)["input_ids"] == ids
        assert back.encode(t, allowed_special="all") == ids
        assert hf.decode(ids, skip_special_tokens=False) == t


def test_gpt2_written_as_hf_loads_in_hf(gpt2_dir, tmp_path):
    from tokenizers import Tokenizer

    ours = ours_gpt2(gpt2_dir)
    ours.save_hf(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for t in VARIED_TEXTS:
        assert hf.encode(t).ids == ours.encode(t, allowed_special="all")


def test_unsupported_hf_settings_are_named(tmp_path):
    ours = BPETokenizer("gpt2").train("\n".join(VARIED_TEXTS), 300)
    ours.save_hf(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ScratchError, match="unsupported pre_tokenizer"):
        load(tmp_path / "tokenizer.json")
    data["pre_tokenizer"]["add_prefix_space"] = False
    data["model"]["continuing_subword_prefix"] = "##"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ScratchError, match="continuing_subword_prefix"):
        load(tmp_path / "tokenizer.json")
