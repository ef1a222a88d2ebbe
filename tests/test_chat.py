"""scratchllm.chat.Chat and `scratchllm chat` on a small GPT with a character tokenizer
(no chat template: the conversation is read as "role: text" lines).

The answers are checked against generate() run without a cache on the whole
rendered conversation, so keeping the cache across turns must not change a number."""
import subprocess
import sys

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.chat import Chat, _plain_template
from scratchllm.generate import generate
from scratchllm.models import GPT, GPTConfig
from scratchllm.tokenizers import CharTokenizer

TEXT = "user: hello there\nassistant: hi, how are you?\nuser: fine\nassistant: good to hear.\n"


@pytest.fixture(scope="module")
def model_and_tok():
    tok = CharTokenizer.from_text(TEXT + "abcdefghijklmnopqrstuvwxyz .,?!:\n")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32), seed=3)
    for name, p in model.named_parameters():  # larger weights: answers that differ from turn to turn
        if ".ln_" not in name and "ln_f" not in name:
            p.data *= 10
    return model, tok


def _greedy_reference(model, tok, messages, max_new):
    """What an uncached greedy pass on the whole conversation answers, cut where Chat cuts it."""
    ids = np.asarray(tok.encode(_plain_template(messages)), dtype=np.int64)
    out = generate(model, ids, max_new, temperature=0, use_cache=False)[len(ids):]
    answer = []
    for t in out:
        if tok.decode([int(t)]) == "\n":
            break
        answer.append(int(t))
    return tok.decode(answer).strip()


def test_turns_keep_the_cache_and_equal_an_uncached_pass(model_and_tok):
    model, tok = model_and_tok
    chat = Chat(model, tok, temperature=0, max_new_tokens=12)
    fed = []
    forward = model.forward

    def counting(ids, *a, **k):
        fed.append(np.asarray(ids).shape[-1])
        return forward(ids, *a, **k)

    model.forward = counting
    try:
        first = chat.reply("hello there")
        before = list(chat.cached)  # the first prompt and answer, as the cache holds them
        fed.clear()
        second = chat.reply("fine")
    finally:
        del model.forward
    assert first == _greedy_reference(model, tok, chat.messages[:1], 12)
    assert second == _greedy_reference(model, tok, chat.messages[:3], 12)
    # the second turn ran only the tokens the cache did not hold: its prompt's new part, then one per token
    prompt2 = tok.encode(_plain_template(chat.messages[:3]))
    shared = 0
    for a, b in zip(before, prompt2[:-1]):
        if a != b:
            break
        shared += 1
    assert fed[0] == len(prompt2) - shared
    assert fed[0] < len(prompt2)
    assert all(n == 1 for n in fed[1:])


def test_reset_forgets_the_conversation(model_and_tok):
    model, tok = model_and_tok
    chat = Chat(model, tok, temperature=0, max_new_tokens=8, system="be kind")
    a = chat.reply("hello there")
    chat.reply("fine")
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "be kind"}] and chat.cached == []
    assert chat.reply("hello there") == a


def test_seeded_sampling_repeats(model_and_tok):
    model, tok = model_and_tok
    a = Chat(model, tok, temperature=1.0, top_k=5, seed=11, max_new_tokens=10).reply("hello")
    b = Chat(model, tok, temperature=1.0, top_k=5, seed=11, max_new_tokens=10).reply("hello")
    assert a == b


def test_a_conversation_longer_than_the_context_is_refused(model_and_tok):
    model, tok = model_and_tok
    chat = Chat(model, tok, temperature=0, max_new_tokens=4)
    with pytest.raises(sl.ScratchError, match="reads at most 256"):
        chat.reply("hello " * 60)
    assert chat.messages == []


@pytest.fixture(scope="module")
def ckpt(model_and_tok, tmp_path_factory):
    model, tok = model_and_tok
    return sl.save(model, tmp_path_factory.mktemp("chat") / "ckpt", tokenizer=tok)


def _run(args, stdin=""):
    return subprocess.run([sys.executable, "-m", "scratchllm", "chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_cli_prompt_answers_once(model_and_tok, ckpt):
    model, tok = model_and_tok
    r = _run(["--model", str(ckpt), "--prompt", "hello there", "--temperature", "0", "--max-new-tokens", "12"])
    assert r.returncode == 0, r.stderr
    expected = _greedy_reference(model, tok, [{"role": "user", "content": "hello there"}], 12)
    assert r.stdout.strip() == expected
    assert "tokens/s" in r.stderr


def test_cli_interactive_through_a_pipe(model_and_tok, ckpt):
    model, tok = model_and_tok
    r = _run(["--model", str(ckpt), "--temperature", "0", "--max-new-tokens", "12"],
             stdin="hello there\nfine\n/reset\nhello there\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.splitlines() if line.strip()]
    m1 = [{"role": "user", "content": "hello there"}]
    first = _greedy_reference(model, tok, m1, 12)
    second = _greedy_reference(model, tok, m1 + [{"role": "assistant", "content": first},
                                                 {"role": "user", "content": "fine"}], 12)
    assert [a.strip() for a in answers] == [first, second, first]
    assert r.stderr.count("tokens written at") == 3 and "[conversation reset]" in r.stderr
