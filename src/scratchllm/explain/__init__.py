"""Pen-and-paper traces: every number a small model computes, printed in order."""
from .charmlp import explain_charmlp, trace_charmlp
from .classifier import explain_classifier, trace_classifier

__all__ = ["explain_classifier", "trace_classifier", "explain_charmlp", "trace_charmlp"]
