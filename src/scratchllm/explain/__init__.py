"""Pen-and-paper traces: every number a small model computes, printed in order."""
from .charmlp import explain_charmlp, trace_charmlp
from .bpe import bpe_steps, explain_bpe
from .classifier import explain_classifier, explain_training_step, trace_classifier, training_step
from . import dynamics  # heads, parameters and embeddings across a run's snapshots
from .lens import logit_lens
from .positions import explain_learned, explain_sinusoidal
from .trace import Trace, trace  # the name ``trace`` is the function; the module is explain.trace

__all__ = ["explain_classifier", "trace_classifier", "explain_charmlp", "trace_charmlp",
           "explain_training_step", "training_step", "explain_sinusoidal", "explain_learned",
           "explain_bpe", "bpe_steps", "trace", "Trace", "logit_lens"]
