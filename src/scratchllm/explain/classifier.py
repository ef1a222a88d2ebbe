"""The leaf / flower classifier worked out as on paper.

``trace_classifier`` recomputes the model's forward pass step by step in
float64 NumPy, keeping every intermediate number; ``explain_classifier``
prints them: the input scaling, then for every neuron each input × weight,
the sum with the bias and the activation, then the two scores and the verdict.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import no_grad

ACTIVATIONS = {  # name -> (function on arrays, formula for the reader)
    "relu": (lambda s: np.maximum(s, 0.0), "relu(s) = max(0, s)"),
    "tanh": (np.tanh, "tanh(s) = (eˢ − e⁻ˢ) / (eˢ + e⁻ˢ)"),
    "sigmoid": (lambda s: 1.0 / (1.0 + np.exp(-s)), "sigmoid(s) = 1 / (1 + e⁻ˢ)"),
    "gelu": (lambda s: 0.5 * s * (1 + np.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s ** 3))),
             "gelu(s) = 0.5·s·(1 + tanh(√(2/π)·(s + 0.044715·s³)))"),
}


def neuron_names(model) -> list[list[str]]:
    """Names of each layer's neurons: h1..hn (h1_1.. with several hidden layers), then the classes."""
    hidden = model.hidden
    names = [[f"h{j + 1}" if len(hidden) == 1 else f"h{i + 1}_{j + 1}" for j in range(n)]
             for i, n in enumerate(hidden)]
    return names + [list(model.classes)]


def trace_classifier(model, measured) -> dict:
    """Every number of one forward pass for one example ``measured`` (4,)."""
    measured = np.asarray(measured, dtype=np.float64).reshape(-1)
    x = (measured - model.mean) / model.std                        # (4,) scaled inputs
    act = ACTIVATIONS[model.activation][0]
    layers, a = [], x
    linears = model.linear_layers()
    for i, lin in enumerate(linears):
        W = lin.weight.data.astype(np.float64)                     # (out, in)
        b = lin.bias.data.astype(np.float64)                       # (out,)
        products = W * a                                           # (out, in): input j × weight (k, j)
        s = products.sum(axis=1) + b                               # (out,)
        out = s if i == len(linears) - 1 else act(s)               # the output layer has no activation
        layers.append({"inputs": a, "weights": W, "products": products, "bias": b, "sums": s, "outputs": out})
        a = out
    e = np.exp(a - a.max())
    with no_grad():
        model_scores = model(measured[None, :]).data[0].astype(np.float64)
    return {"measured": measured, "scaled": x, "layers": layers, "scores": a, "probs": e / e.sum(),
            "model_scores": model_scores, "verdict": int(a.argmax())}


def _num(v, width=8, digits=4) -> str:
    """A signed number; one that rounds to zero prints as 0 (no "-0.0000")."""
    text = f"{v:+.{digits}f}"
    if float(text) == 0:
        text = f"{0:.{digits}f}"
    return f"{text:>{width}}"


def explain_classifier(model, measured, source: str = "") -> str:
    """The forward pass for ``measured`` = (R, G, B, volume) as text."""
    t = trace_classifier(model, measured)
    names = neuron_names(model)
    in_names = list(model.inputs)
    formula = ACTIVATIONS[model.activation][1]
    sizes = " → ".join([str(len(in_names))] + [f"{n} ({model.activation})" for n in model.hidden]
                       + [str(len(model.classes))])
    lines = [f"Leaf or flower? A network of {sizes} neurons, computed by hand"
             + (f" (weights: {source})" if source else "") + ".",
             "",
             "Legend: x = a neuron's input, w = its weight, b = its bias,",
             "        s = x₁·w₁ + x₂·w₂ + … + b (the neuron's sum), " + formula + ".",
             "        Numbers are rounded to print them; every sum uses the unrounded values.",
             "",
             "Step 1. Scale the inputs with the training data's mean and std: x = (measured − mean) / std",
             "",
             f"    {'input':<8}{'measured':>10}{'mean':>10}{'std':>10}{'x':>11}"]
    for name, m, mu, sd, x in zip(in_names, t["measured"], model.mean, model.std, t["scaled"]):
        lines.append(f"    {name:<8}{m:10.3f}{mu:10.3f}{sd:10.3f}  {_num(x)}")

    n_layers = len(t["layers"])
    for i, layer in enumerate(t["layers"]):
        last = i == n_layers - 1
        prev = in_names if i == 0 else names[i - 1]
        lines.append("")
        if last:
            lines.append(f"Step {i + 2}. Output layer: {len(names[i])} neurons, no activation: their sums are the scores")
        else:
            which = "Hidden layer" if n_layers == 2 else f"Hidden layer {i + 1}"
            lines.append(f"Step {i + 2}. {which}: {len(names[i])} neurons, each {formula}")
        width = max(len(n) for n in prev + ["sum s", "bias"]) + 2
        for k, name in enumerate(names[i]):
            lines.append("")
            lines.append(f"  {'score ' + name if last else 'neuron ' + name}")
            lines.append(f"    {'':<{width}}{'x':>8}     {'w':>8}     {'x × w':>8}")
            for j, pname in enumerate(prev):
                lines.append(f"    {pname:<{width}}{_num(layer['inputs'][j])}  ×  {_num(layer['weights'][k, j])}"
                             f"  =  {_num(layer['products'][k, j])}")
            lines.append(f"    {'bias':<{width + 26}}{_num(layer['bias'][k])}")
            if last:
                lines.append(f"    {'score ' + name + ' = s':<{width + 26}}{_num(layer['sums'][k])}")
            else:
                lines.append(f"    {'sum s':<{width + 26}}{_num(layer['sums'][k])}")
                lines.append(f"    {name + ' = ' + model.activation + '(s)':<{width + 26}}{_num(layer['outputs'][k])}")

    scores, probs, verdict = t["scores"], t["probs"], t["verdict"]
    lines += ["", f"Step {n_layers + 2}. The larger score is the answer", ""]
    for k, name in enumerate(model.classes):
        mark = "   ← larger" if k == verdict else ""
        lines.append(f"    {name:<8}{_num(scores[k], 9)}{mark}")
    lines += ["",
              f"Verdict: {model.classes[verdict]}   ("
              + f" > ".join(f"{model.classes[k]} {scores[k]:+.4f}" for k in np.argsort(-scores)) + ")",
              "As probabilities (softmax, e^score / Σ e^score): "
              + ", ".join(f"{name} {100 * p:.2f}%" for name, p in zip(model.classes, probs)),
              "Check: the model's own forward pass gives "
              + ", ".join(f"{name} {s:+.4f}" for name, s in zip(model.classes, t["model_scores"]))]
    return "\n".join(lines)
