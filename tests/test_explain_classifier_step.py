"""`scratchllm explain classifier ... --label L --lr LR`: one training step by hand.

Every number is parsed back from the printout and compared with references
made here, independently of the code under test: the loss and the gradients
from a float64 NumPy forward written in this file (finite differences, and
the chain rule by hand), the new weights and the loss after from
``optim.SGD`` really stepping a copy of the model.
"""
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

import scratchllm as sl
from scratchllm import functional as F
from scratchllm.cli import main
from scratchllm.models import Classifier
from scratchllm.models.classifier import train_classifier
from scratchllm.optim import SGD
from scratchllm.tensor import no_grad

NUM = r"([+-]?\d+\.\d+)"
RAW = [32.0, 107.0, 56.0, 11.2]
DIGITS6 = 5.1e-7  # half a unit in the 6th decimal, and a little float32 slack


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    model, _ = train_classifier(seed=1, hidden=(5,))
    return sl.save(model, tmp_path_factory.mktemp("ckpt") / "classifier")


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """Two hidden layers, tanh, untrained: every gradient is non-zero and the chain is longer."""
    rng = np.random.default_rng(3)
    model = Classifier(hidden=(4, 3), activation="tanh", mean=[120, 120, 60, 20], std=[60, 50, 40, 15], rng=rng)
    return sl.save(model, tmp_path_factory.mktemp("ckpt") / "deep")


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def parse_step(text):
    """The step's numbers: d loss/d score, gradient lines, hidden lines, update lines, losses."""
    step = text[text.index("The loss for the label"):]
    d_scores = {m[1]: (float(m[2]), int(m[3]), float(m[4]))
                for m in re.finditer(r"d loss / d score_(\w+)\s+= " + NUM + r" − ([01]) =\s+" + NUM, step)}
    grads, updates, hidden = {}, {}, {}
    for line in step.splitlines():
        if m := re.fullmatch(r"    ([wb]\([^)]*\))\s+" + NUM + r"\s+×\s+(" + NUM[1:-1] + r"|1)\s+=\s+" + NUM, line):
            grads[m[1]] = (float(m[2]), float(m[3]), float(m[4]))
        elif m := re.fullmatch(r"    ([wb]\([^)]*\))\s+" + NUM + r"\s+−\s+(\S+) × \(\s*" + NUM + r"\)\s+=\s+" + NUM,
                               line):
            updates[m[1]] = (float(m[2]), float(m[3]), float(m[4]), float(m[5]))
        elif m := re.fullmatch(r"    (\w+): d loss/d h = (.*) = \s*" + NUM + r";  × \w+'\(" + NUM + r"\) = " + NUM
                               + r"  →  d loss/d s = \s*" + NUM, line):
            terms = [(float(a), float(b)) for a, b in re.findall(r"\(" + NUM + r"\)·\(" + NUM + r"\)", m[2])]
            hidden[m[1]] = (terms, float(m[3]), float(m[4]), float(m[5]), float(m[6]))
    label, p, loss = re.search(r"loss = −log p\((\w+)\) = −log " + NUM + " = " + NUM, step).groups()
    before, after = re.search(r"loss: " + NUM + " → " + NUM, step).groups()
    p_before, p_after = re.search(r"p\(\w+\): " + NUM + " → " + NUM, step).groups()
    return {"d_scores": d_scores, "grads": grads, "updates": updates, "hidden": hidden, "label": label,
            "p": float(p), "loss": float(loss), "loss_before": float(before), "loss_after": float(after),
            "p_after": float(p_after), "p_before": float(p_before)}


def load_weights(d):
    """(config, [(W, b)] per layer, float64) read from the files on disk."""
    model = sl.load(d)
    w = {k: v.astype(np.float64) for k, v in load_file(str(d / "model.safetensors")).items()}
    n = len(model.hidden) + 1
    return model, [(w[f"net.{2 * i}.weight"], w[f"net.{2 * i}.bias"]) for i in range(n)]


ACT = {"relu": lambda s: np.maximum(s, 0), "tanh": np.tanh}


def reference_loss(model, layers, label):
    """The forward pass written here in float64: scaled input, layers, softmax cross-entropy."""
    a = (np.array(RAW) - model.mean) / model.std
    for i, (W, b) in enumerate(layers):
        a = W @ a + b
        if i < len(layers) - 1:
            a = ACT[model.activation](a)
    return np.logaddexp.reduce(a) - a[label]


def param_names(model):
    """Printed weight name -> (layer index, 'W' or 'b', index) in the order the network stores them."""
    ins = list(model.inputs)
    n_hidden = len(model.hidden)
    out = {}
    for i in range(n_hidden + 1):
        if i < n_hidden:
            to = [f"h{j + 1}" if n_hidden == 1 else f"h{i + 1}_{j + 1}" for j in range(model.hidden[i])]
        else:
            to = list(model.classes)
        for k, t in enumerate(to):
            for j, f in enumerate(ins):
                out[f"w({t}, {f})"] = (i, "W", (k, j))
            out[f"b({t})"] = (i, "b", (k,))
        ins = to
    return out


@pytest.mark.parametrize("which, label, lr", [("trained", "leaf", 0.1), ("trained", "flower", 0.5),
                                              ("deep", "leaf", 0.1), ("deep", "flower", 0.3)])
def test_step_numbers_are_the_gradients_and_the_sgd_step(which, label, lr, trained_dir, deep_dir, capsys):
    d = trained_dir if which == "trained" else deep_dir
    code, out, err = run(capsys, ["explain", "classifier", *map(str, RAW), "--weights", str(d),
                                  "--label", label, "--lr", str(lr)])
    assert code == 0 and err == ""
    s = parse_step(out)
    model, layers = load_weights(d)
    k_label = list(model.classes).index(label)
    names = param_names(model)
    assert set(s["grads"]) == set(names) == set(s["updates"])  # every weight, once each

    # The loss and d loss / d score against the float64 reference.
    loss = reference_loss(model, layers, k_label)
    assert s["label"] == label
    assert s["loss"] == pytest.approx(loss, abs=DIGITS6) and s["loss_before"] == s["loss"]
    assert s["p"] == pytest.approx(np.exp(-loss), abs=DIGITS6)
    assert list(s["d_scores"]) == list(model.classes)  # one row per class, all parsed
    for k, c in enumerate(model.classes):
        p_k, one, g = s["d_scores"][c]
        assert one == (k == k_label) and g == pytest.approx(p_k - one, abs=1.5e-6)

    # Each gradient against central finite differences of the float64 forward.
    for name, (i, kind, idx) in names.items():
        h = 1e-6
        plus = [(W.copy(), b.copy()) for W, b in layers]
        minus = [(W.copy(), b.copy()) for W, b in layers]
        (plus[i][0] if kind == "W" else plus[i][1])[idx] += h
        (minus[i][0] if kind == "W" else minus[i][1])[idx] -= h
        fd = (reference_loss(model, plus, k_label) - reference_loss(model, minus, k_label)) / (2 * h)
        dlds, factor, grad = s["grads"][name]
        assert grad == pytest.approx(fd, abs=1e-6), name
        # The chain rule as printed: d loss/d s × d s/d w = gradient (to the printed precision).
        assert dlds * factor == pytest.approx(grad, abs=DIGITS6 * (1 + abs(factor) + abs(dlds)) + 1e-6), name

    # The backward through the hidden neurons: d loss/d h = Σ_k d loss/d s_k · w(k, j), then × act'(s).
    assert len(s["hidden"]) == sum(model.hidden)
    fan_out = {}  # each hidden neuron's sum has one term per neuron of the next layer
    for i, n in enumerate(model.hidden):
        nxt = model.hidden[i + 1] if i + 1 < len(model.hidden) else len(model.classes)
        fan_out.update({f"h{j + 1}" if len(model.hidden) == 1 else f"h{i + 1}_{j + 1}": nxt for j in range(n)})
    assert {h: len(v[0]) for h, v in s["hidden"].items()} == fan_out
    for hname, (terms, dh, s_j, slope, ds) in s["hidden"].items():
        assert dh == pytest.approx(sum(a * b for a, b in terms), abs=DIGITS6 * (1 + sum(abs(a) + abs(b) for a, b in terms)))
        expected_slope = 1 - np.tanh(s_j) ** 2 if model.activation == "tanh" else float(s_j > 0)
        assert slope == pytest.approx(expected_slope, abs=2e-6)
        assert ds == pytest.approx(dh * slope, abs=DIGITS6 * (2 + abs(dh) + abs(slope)))

    # The update: what optim.SGD does to a copy of the model, and the loss after it.
    ref = sl.load(d)
    F.cross_entropy(ref([RAW]), np.array([k_label])).backward()
    SGD(ref.parameters(), lr=lr).step()
    stepped = ref.linear_layers()
    for name, (i, kind, idx) in names.items():
        old, lr_printed, grad, new = s["updates"][name]
        assert lr_printed == pytest.approx(lr)
        assert grad == s["grads"][name][2]
        assert old == pytest.approx((layers[i][0] if kind == "W" else layers[i][1])[idx], abs=DIGITS6)
        param = stepped[i].weight if kind == "W" else stepped[i].bias
        assert new == pytest.approx(float(param.data[idx]), abs=DIGITS6), name
        assert new == pytest.approx(old - lr * grad, abs=2 * DIGITS6 + lr * DIGITS6), name
    with no_grad():
        after = F.cross_entropy(ref([RAW]), np.array([k_label])).item()
    assert s["loss_after"] == pytest.approx(after, abs=DIGITS6)
    assert s["loss_after"] < s["loss_before"]  # a small step against the gradient lowers the loss
    assert s["p_after"] == pytest.approx(np.exp(-after), abs=DIGITS6) and s["p_before"] == s["p"]


def test_step_leaves_the_model_unchanged(trained_dir):
    from scratchllm.explain.classifier import training_step

    model = sl.load(trained_dir)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    t = training_step(model, RAW, 1, 0.5)
    assert t["loss_after"] < t["loss"]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
        assert model.state_dict()[k] is not t["model"].state_dict()[k]


def test_without_label_there_is_no_step(trained_dir, capsys):
    code, out, _ = run(capsys, ["explain", "classifier", *map(str, RAW), "--weights", str(trained_dir)])
    assert code == 0 and "Gradient descent" not in out and "Verdict" in out


@pytest.mark.parametrize("extra, words", [(["--label", "tree"], "--label must be one of leaf, flower"),
                                          (["--label", "leaf", "--lr", "0"], "--lr must be above 0"),
                                          (["--label", "leaf", "--lr", "fast"], "--lr must be a number")])
def test_bad_label_or_lr_is_one_line(extra, words, trained_dir, capsys):
    code, out, err = run(capsys, ["explain", "classifier", *map(str, RAW), "--weights", str(trained_dir), *extra])
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err
