"""Models, from a four-input classifier up to a GPT."""
from .charmlp import CharMLP
from .classifier import Classifier
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig
