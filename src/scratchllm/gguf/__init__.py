"""GGUF files (llama.cpp's format), read from the specification.

    meta, tensors = read(path)               # metadata dict, float32 arrays (NumPy row-major)
    meta, lazy = read(path, lazy=True)       # tensors dequantized one by one, on lookup
    config, state = gguf_to_hf(meta, tensors)   # Hugging Face config.json fields and weight names

reader.py parses the file; dequant.py turns ggml's quantized blocks into
float32; to_hf.py renames llama.cpp's tensors and settings to Hugging Face's.
"""
from .dequant import DEQUANTIZERS, GGML_TYPES, dequantize_blocks
from .reader import GGUFFile, TensorInfo, read
from .to_hf import gguf_to_hf

__all__ = ["read", "gguf_to_hf", "GGUFFile", "TensorInfo", "dequantize_blocks", "DEQUANTIZERS", "GGML_TYPES"]
