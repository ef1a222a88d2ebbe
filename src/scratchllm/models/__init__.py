"""Models, from a four-input classifier up to a GPT; language models answer models.base.LanguageModel."""
from .base import LanguageModel
from .charmlp import CharMLP
from .classifier import Classifier
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .transformer import Transformer, TransformerConfig
