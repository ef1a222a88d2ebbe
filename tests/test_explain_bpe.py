"""`scratchllm explain bpe`: the printed merges are BPE's, and they end in the tokenizer's own ids.

Each printed step is replayed here from the tokenizer file read independently
(its merge list, or GPT-2's ranks as tiktoken reads them): the merged pair
must be the adjacent pair of lowest rank, leftmost on ties, with that rank,
and the pieces after it must be the pieces printed. The final ids must equal
the tokenizer's encode and a reference's: Hugging Face ``tokenizers`` on the
same merges for a trained tokenizer, tiktoken for GPT-2.
"""
import json
import re

import pytest

from scratchllm.cli import main
from scratchllm.tokenizers import BPETokenizer, CharTokenizer
from tokenizers_refs import VARIED_TEXTS, ours_gpt2, tiktoken_gpt2

WORDS = ["cats", "the cats sat", "Hello, world!", "unbelievable", "a", "  two spaces",
         "I'm sure they'll say", "mississippi aaaa", 'she said "it\'s" ok']  # "'s" is printed in double quotes
MORE = ["naïve café", "日本語", "emoji: 😀", "3.14159 + 2"]  # ids compared; steps hold partial UTF-8 bytes


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (as in OpenAI's encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


CHAR_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(s: str) -> bytes:
    return bytes(CHAR_TO_BYTE[c] for c in s)


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# A piece in single or double quotes (repr() picks double ones for "'s"), escapes included.
QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""


def pieces(text: str) -> list[bytes]:
    """Quoted pieces 'ca' 't' ' s' "'s" (ASCII only) back to bytes."""
    return [eval(q).encode() for q in re.findall(QUOTED, text)]  # noqa: S307 - quoted ASCII


def parse(out: str, text: str):
    """[(pre-token start, [(left, right, rank, after)])], ids; every row counted, so that
    rows in another format cannot leave the replay with nothing to check."""
    blocks = []
    for line in out.splitlines():
        if m := re.fullmatch(r"    start\s+(.*)", line):
            blocks.append((pieces(m[1]), []))
        elif m := re.fullmatch(rf"\s+\d+\. merge ({QUOTED}) \+ ({QUOTED})\s+rank\s+(\d+)  →  (.*)", line):
            blocks[-1][1].append((pieces(m[1])[0], pieces(m[2])[0], int(m[3]), pieces(m[4])))
    ids = [int(i) for i in re.search(r"^ids:\s+(.*)$", out, re.M)[1].split()]
    heads = [tuple(map(int, h)) for h in re.findall(r"^pre-token (\d+) of (\d+): .*, (\d+) bytes?$", out, re.M)]
    assert heads and [h[:2] for h in heads] == [(k + 1, len(heads)) for k in range(len(heads))], heads
    assert len(blocks) == len(heads) and sum(h[2] for h in heads) == len(text.encode())
    for (start, steps), h in zip(blocks, heads):
        assert len(start) == h[2]  # one piece per byte
        assert all(len(after) == len(start) - k - 1 for k, (*_, after) in enumerate(steps))  # one join a row
    # every merge row parsed: the pieces left at the end are the tokens
    assert sum(len(steps[-1][3]) if steps else len(start) for start, steps in blocks) == len(ids)
    assert sum(len(steps) for _, steps in blocks) == len(text.encode()) - len(ids)
    return blocks, ids


def replay(blocks, rank_of):
    """Check each printed merge against the lowest-rank rule with ``rank_of(left, right)`` (None: no merge)."""
    for start, steps in blocks:
        seq = list(start)
        assert all(len(b) == 1 for b in seq)  # one token per byte to begin with
        for left, right, rank, after in steps:
            ranked = [(rank_of(a, b), i) for i, (a, b) in enumerate(zip(seq, seq[1:])) if rank_of(a, b) is not None]
            best, i = min(ranked)
            assert (left, right, rank) == (seq[i], seq[i + 1], best)
            seq[i:i + 2] = [left + right]
            assert after == seq
        assert all(rank_of(a, b) is None for a, b in zip(seq, seq[1:]))  # nothing left to merge


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    text = "\n".join(VARIED_TEXTS) + "\ncats sat on the mat with other cats and a cat." * 20
    tok = BPETokenizer("gpt2", special_tokens=["<|endoftext|>"]).train(text, 420)
    d = tmp_path_factory.mktemp("tok")
    tok.save(d / "tok.json")
    tok.save_hf(d / "hf")
    return d


@pytest.mark.parametrize("text", WORDS + MORE)
def test_trained_tokenizer_merges_and_ids(text, trained, capsys):
    from tokenizers import Tokenizer

    path = trained / "tok.json"
    code, out, err = run(capsys, ["explain", "bpe", "--tokenizer", str(path), text])
    assert code == 0 and err == ""
    blocks, ids = parse(out, text)
    tok = BPETokenizer.load(path)
    assert ids == tok.encode(text) == Tokenizer.from_file(str(trained / "hf" / "tokenizer.json")).encode(text).ids
    if text.isascii():
        data = json.loads(path.read_text(encoding="utf-8"))
        ranks = {}
        for r, m in enumerate(data["merges"]):
            a, b = m.split(" ")
            ranks.setdefault((token_bytes(a), token_bytes(b)), r)
        replay(blocks, lambda a, b: ranks.get((a, b)))
        assert b"".join(b"".join(s) for s, _ in blocks) == text.encode()


def test_cats_shows_cat_then_s(trained, capsys):
    _, out, _ = run(capsys, ["explain", "bpe", "--tokenizer", str(trained / "tok.json"), "cats"])
    blocks, _ = parse(out, "cats")
    assert [b"cat", b"s"] in [after for *_, after in blocks[0][1]]  # "c a t s" → … → "cat s" on the way


@pytest.fixture
def gpt2_dir(shared_data):
    d = shared_data / "gpt2"
    if not (d / "encoder.json").is_file():
        pytest.skip(f"GPT-2 files not found in {d}")
    return d


@pytest.mark.parametrize("text", WORDS + MORE)
def test_gpt2_merges_and_ids_as_tiktoken(text, gpt2_dir, capsys):
    code, out, err = run(capsys, ["explain", "bpe", "--tokenizer", str(gpt2_dir), text])
    assert code == 0 and err == ""
    blocks, ids = parse(out, text)
    ref = tiktoken_gpt2(gpt2_dir)
    assert ids == ours_gpt2(gpt2_dir).encode(text) == ref.encode(text)
    if text.isascii():
        ranks = ref._mergeable_ranks
        replay(blocks, lambda a, b: ranks.get(a + b))


@pytest.mark.parametrize("make, text, words", [
    ("char", "cats", "not a BPE tokenizer"),
    ("bpe", "", "the text is empty"),
    ("bpe", "a <|endoftext|> b", "special token"),
    ("missing", "cats", "tok.json"),
])
def test_bad_input_is_one_line(make, text, words, tmp_path, capsys):
    path = tmp_path / "tok.json"
    if make == "char":
        CharTokenizer().train("the cats", None).save(path)
    elif make == "bpe":
        BPETokenizer("gpt2", special_tokens=["<|endoftext|>"]).train("the cats sat", 260).save(path)
    code, out, err = run(capsys, ["explain", "bpe", "--tokenizer", str(path), text])
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err and "Traceback" not in err
