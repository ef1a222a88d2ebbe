"""GGUF files (llama.cpp's format), read from the specification.

    meta, tensors = read(path)               # metadata dict, float32 arrays (NumPy row-major)
    meta, lazy = read(path, lazy=True)       # tensors dequantized one by one, on lookup
    config, state = gguf_to_hf(meta, tensors)   # Hugging Face config.json fields and weight names
    model = load_model(path)                 # the Llama-family model (llama, qwen2, qwen3); = sl.load(path)
    tok = load_tokenizer(path)               # the tokenizer of the file's metadata

reader.py parses the file; dequant.py turns ggml's quantized blocks into
float32; to_hf.py renames llama.cpp's tensors and settings to Hugging Face's; load.py
builds the model and the tokenizer.
"""
from .dequant import DEQUANTIZERS, GGML_TYPES, dequantize_blocks
from .reader import GGUFFile, TensorInfo, read
from .load import load_model, load_tokenizer
from .to_hf import gguf_to_hf, hf_config, hf_tensors, unpermute_qk

load_gguf = load_model

__all__ = ["read", "gguf_to_hf", "hf_config", "hf_tensors", "unpermute_qk", "load_model", "load_gguf",
           "load_tokenizer", "GGUFFile", "TensorInfo", "dequantize_blocks", "DEQUANTIZERS", "GGML_TYPES"]
