"""The leaf / flower classifier worked out as on paper.

``trace_classifier`` recomputes the model's forward pass step by step in
float64 NumPy, keeping every intermediate number; ``explain_classifier``
prints them: the input scaling, then for every neuron each input × weight,
the sum with the bias and the activation, then the two scores and the verdict.

``training_step`` / ``explain_training_step`` go on to one step of training
for a given label: the loss, every weight's gradient by the chain rule, the
new weights of one ``optim.SGD`` step and the loss after it, all taken from
the model's own forward, backward and optimizer run on a copy.
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


# how to get the article's picture: 4 inputs → 3 hidden neurons → 2 outputs
ARTICLE_NETWORK = ("The article's picture has 3 hidden neurons (4 → 3 → 2). That exact network: "
                   "scratchllm classify train --hidden 3 --out out/classifier3, then add --weights out/classifier3.")


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
             *([] if tuple(model.hidden) == (3,) else [ARTICLE_NETWORK]),
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


# ---- one training step ------------------------------------------------------------------------
DERIVATIVES = {  # the activation's derivative, for the reader (its values come from the engine)
    "relu": "relu'(s) = 1 if s > 0, else 0",
    "tanh": "tanh'(s) = 1 − tanh(s)²",
    "sigmoid": "sigmoid'(s) = sigmoid(s)·(1 − sigmoid(s))",
    "gelu": "gelu'(s), the derivative of the formula above",
}


def training_step(model, measured, label: int, lr: float) -> dict:
    """One gradient-descent step on a copy of ``model`` for one example, every number
    from the model's own forward, its engine's backward and ``optim.SGD``.

    The network is run module by module, each from a leaf tensor holding the
    previous module's output, so that the backward can stop between modules
    and show the gradient there: d loss / d score, d loss / d hidden, … .
    ``model`` itself is not changed.
    """
    import copy

    from .. import functional as F
    from ..optim import SGD
    from ..tensor import Tensor

    step = copy.deepcopy(model)
    step.zero_grad()
    dtype = step.net[0].weight.dtype
    x = step.scale(np.asarray(measured, dtype=np.float64)[None, :]).astype(dtype)  # (1, 4)
    pieces, a = [], x
    for module in step.net:
        leaf = Tensor(a, requires_grad=True)
        out = module(leaf)
        pieces.append((module, leaf, out))
        a = out.data
    scores = Tensor(a, requires_grad=True)                          # (1, 2)
    loss = F.cross_entropy(scores, np.array([label]))
    loss.backward()
    grad_out = [None] * len(pieces)  # d loss / d (each module's output)
    g = scores.grad
    for i in reversed(range(len(pieces))):
        grad_out[i] = g
        module, leaf, out = pieces[i]
        out.backward(g)
        g = leaf.grad

    linears = step.linear_layers()
    layers = []
    for i, (module, leaf, out) in enumerate(pieces):
        if module not in linears:
            continue
        k = len(layers)
        layer = {"inputs": leaf.data[0].astype(np.float64), "sums": out.data[0].astype(np.float64),
                 "d_sums": grad_out[i][0].astype(np.float64),
                 "weight": module.weight.data.astype(np.float64), "bias": module.bias.data.astype(np.float64),
                 "grad_weight": module.weight.grad.astype(np.float64),
                 "grad_bias": module.bias.grad.astype(np.float64)}
        if k > 0:  # this layer's inputs are the previous layer's activations
            act, act_in, _ = pieces[i - 1]
            s_leaf = Tensor(act_in.data, requires_grad=True)
            act(s_leaf).backward(np.ones_like(act_in.data))        # d h / d s, elementwise, by the engine
            prev = layers[-1]
            prev["d_outputs"] = grad_out[i - 1][0].astype(np.float64)  # d loss / d h
            prev["act_slope"] = s_leaf.grad[0].astype(np.float64)       # d h / d s
        layers.append(layer)

    probs = np.exp(a[0] - a[0].max()).astype(np.float64)
    probs /= probs.sum()
    SGD(step.parameters(), lr=lr).step()
    for lin, layer in zip(linears, layers):
        layer["new_weight"] = lin.weight.data.astype(np.float64)
        layer["new_bias"] = lin.bias.data.astype(np.float64)
    with no_grad():
        after = step(np.asarray(measured, dtype=np.float64)[None, :])
        loss_after = F.cross_entropy(after, np.array([label])).item()
    after = after.data[0].astype(np.float64)
    probs_after = np.exp(after - after.max())
    probs_after /= probs_after.sum()
    return {"label": label, "lr": lr, "scores": a[0].astype(np.float64), "probs": probs,
            "loss": float(loss.item()), "d_scores": scores.grad[0].astype(np.float64), "layers": layers,
            "scores_after": after, "probs_after": probs_after, "loss_after": float(loss_after), "model": step}


def _g(v) -> str:
    """A gradient-sized number: 6 decimals, so small steps stay visible."""
    return _num(v, 10, 6)


def explain_training_step(model, measured, label: int, lr: float, first_step: int = 1) -> str:
    """One training step for one example with label ``label`` as text: the loss,
    the gradients by the chain rule, the new weights, the loss after."""
    t = training_step(model, measured, label, lr)
    names = neuron_names(model)
    in_names = list(model.inputs)
    classes = list(model.classes)
    want = classes[label]
    n = first_step
    p = t["probs"]
    lines = [f"Step {n}. The loss for the label {want}: how far the answer is from the wanted one",
             "",
             f"    p({want}) = e^score_{want} / ({' + '.join('e^score_' + c for c in classes)})"
             f" = {p[label]:.6f}",
             f"    loss = −log p({want}) = −log {p[label]:.6f} = {t['loss']:.6f}"
             "      (0 only when p = 1: a sure, right answer)",
             "",
             f"Step {n + 1}. Gradients, backward by the chain rule: how the loss changes with each weight",
             "",
             f"  d loss / d score_k = p_k − 1 for the label ({want}), p_k for the other class:"]
    width = max(len(c) for c in classes)
    for k, c in enumerate(classes):
        one = 1 if k == label else 0
        lines.append(f"    d loss / d score_{c:<{width}} = {p[k]:.6f} − {one} = {_g(t['d_scores'][k])}")

    layers = t["layers"]
    act = model.activation
    for i in reversed(range(len(layers))):
        layer = layers[i]
        last = i == len(layers) - 1
        outs, ins = names[i], (in_names if i == 0 else names[i - 1])
        out_sym = "score" if last else "s"
        in_sym = "x" if i == 0 else "h"
        lines += ["",
                  f"  {'Output layer' if last else ('Hidden layer' if len(layers) == 2 else f'Hidden layer {i + 1}')}:"
                  f" {out_sym}_k = Σ_j {in_sym}_j · w(k, j) + b_k, so d {out_sym}_k / d w(k, j) = {in_sym}_j"
                  f" and d {out_sym}_k / d b_k = 1",
                  f"    {'weight':<16}{'d loss/d ' + out_sym + '_k':>17}   ×   {'d ' + out_sym + '_k/d w':>13}"
                  f"   =   {'gradient':>10}"]
        for k, oname in enumerate(outs):
            for j, iname in enumerate(ins):
                lines.append(f"    {'w(' + oname + ', ' + iname + ')':<16}{_g(layer['d_sums'][k]):>17}   ×   "
                             f"{_g(layer['inputs'][j]):>13}   =   {_g(layer['grad_weight'][k, j])}")
            lines.append(f"    {'b(' + oname + ')':<16}{_g(layer['d_sums'][k]):>17}   ×   {'1':>13}   =   "
                         f"{_g(layer['grad_bias'][k])}")
        if i > 0:
            below = layers[i - 1]
            lines += ["",
                      f"  Back through the weights to the neurons below: d loss / d h_j = Σ_k d loss/d {out_sym}_k"
                      f" · w(k, j),",
                      f"  then through the activation, {DERIVATIVES[act]}: d loss / d s_j = d loss / d h_j × "
                      f"{act}'(s_j)"]
            for j, hname in enumerate(ins):
                terms = " + ".join(f"({layer['d_sums'][k]:+.6f})·({layer['weight'][k, j]:+.6f})"
                                   for k in range(len(outs)))
                lines.append(f"    {hname}: d loss/d h = {terms} = {_g(below['d_outputs'][j])};"
                             f"  × {act}'({below['sums'][j]:+.6f}) = {below['act_slope'][j]:.6f}"
                             f"  →  d loss/d s = {_g(below['d_sums'][j])}")

    lines += ["", f"Step {n + 2}. Gradient descent: new weight = old − lr × gradient, with lr = {lr:g}",
              "    (every weight moves a little against its gradient; optim.SGD takes this step)", "",
              f"    {'weight':<16}{'old':>10}   −  {lr:g} ×  {'gradient':>10}   =   {'new':>10}"]
    for i, layer in enumerate(layers):
        outs, ins = names[i], (in_names if i == 0 else names[i - 1])
        for k, oname in enumerate(outs):
            rows = [(f"w({oname}, {iname})", layer["weight"][k, j], layer["grad_weight"][k, j],
                     layer["new_weight"][k, j]) for j, iname in enumerate(ins)]
            rows.append((f"b({oname})", layer["bias"][k], layer["grad_bias"][k], layer["new_bias"][k]))
            for name, old, grad, new in rows:
                lines.append(f"    {name:<16}{_g(old)}   −  {lr:g} × ({_g(grad)})  =   {_g(new)}")

    pa = t["probs_after"]
    change = "lower" if t["loss_after"] < t["loss"] else "not lower: lr is too large for this step"
    lines += ["", f"Step {n + 3}. The same measurement through the new weights",
              "",
              "    scores after: " + ", ".join(f"{c} {s:+.6f}" for c, s in zip(classes, t["scores_after"])),
              f"    p({want}): {p[label]:.6f} → {pa[label]:.6f}",
              f"    loss: {t['loss']:.6f} → {t['loss_after']:.6f}  ({change})",
              "",
              "Training repeats this step over many examples and epochs (`scratchllm classify train`);",
              "the weights shown were not saved."]
    return "\n".join(lines)
