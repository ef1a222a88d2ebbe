"""The leaf / flower classifier: its data, its arithmetic, its training, saving it."""
import json

import numpy as np
import pytest

import scratchllm as sl
from scratchllm import functional as F
from scratchllm.models import Classifier
from scratchllm.models.classifier import evaluate, fit, train_classifier
from scratchllm.models.classifier_data import make_leaves_and_flowers, split

from gradcheck import check_grads


@pytest.fixture(scope="module")
def trained():
    return train_classifier(seed=0)


# ---- data ----------------------------------------------------------------------------
def test_data_is_reproducible_and_plausible():
    X1, y1 = make_leaves_and_flowers(500, np.random.default_rng(7))
    X2, y2 = make_leaves_and_flowers(500, np.random.default_rng(7))
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert X1.shape == (500, 4) and set(np.unique(y1)) == {0, 1}
    assert 0.4 < y1.mean() < 0.6                                   # about half flowers
    assert X1[:, :3].min() >= 0 and X1[:, :3].max() <= 255          # 8-bit colours
    assert (X1[:, 3] > 0).all()
    leaves, flowers = X1[y1 == 0], X1[y1 == 1]
    assert np.median(leaves[:, 3]) < np.median(flowers[:, 3])       # flowers larger
    green_share = lambda rows: np.mean(rows[:, 1] > np.maximum(rows[:, 0], rows[:, 2]))
    assert green_share(leaves) > 0.6 > 0.2 > green_share(flowers)   # leaves mostly green, flowers mostly not


def test_no_single_feature_separates_the_classes():
    X, y = make_leaves_and_flowers(4000, np.random.default_rng(1))
    for j in range(4):
        best = max(max(np.mean((X[:, j] > t) == y), np.mean((X[:, j] <= t) == y))
                   for t in np.unique(np.quantile(X[:, j], np.linspace(0, 1, 201))))
        assert best < 0.95, f"feature {j} alone separates leaves from flowers ({best:.3f})"


def test_split_holds_out_a_fraction_without_overlap():
    X = np.arange(40, dtype=float).reshape(10, 4)
    y = np.arange(10)
    (Xt, yt), (Xv, yv) = split(X, y, 0.2, np.random.default_rng(0))
    assert len(yv) == 2 and len(yt) == 8
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(10))
    np.testing.assert_array_equal(Xv[:, 0], yv * 4)                 # rows stay with their labels


# ---- the arithmetic --------------------------------------------------------------------
def test_forward_is_scaling_then_mlp_in_plain_numpy():
    model = Classifier(hidden=(5,), mean=[100, 120, 80, 30], std=[60, 50, 70, 25], rng=np.random.default_rng(3))
    raw = np.array([[32, 107, 56, 11.2], [241, 200, 4, 59.5]])
    W1, b1 = model.net[0].weight.data.astype(float), model.net[0].bias.data.astype(float)
    W2, b2 = model.net[2].weight.data.astype(float), model.net[2].bias.data.astype(float)
    x = (raw - [100, 120, 80, 30]) / np.array([60, 50, 70, 25])
    expected = np.maximum(x @ W1.T + b1, 0) @ W2.T + b2
    np.testing.assert_allclose(model(raw).data, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(raw), expected.argmax(axis=1))


@pytest.mark.parametrize("activation, hidden", [("relu", (4,)), ("tanh", (3, 4))])
def test_gradients_match_finite_differences(activation, hidden):
    rng = np.random.default_rng(5)
    X, y = make_leaves_and_flowers(12, rng)
    model = Classifier(hidden=hidden, activation=activation, mean=X.mean(0), std=X.std(0), rng=rng)
    check_grads(lambda *params: F.cross_entropy(model(X), y), model.parameters())


def test_bad_shapes_and_settings_are_clear_errors():
    model = Classifier()
    with pytest.raises(sl.ScratchError, match="rows of 4 numbers"):
        model([[1, 2, 3]])
    with pytest.raises(sl.ScratchError, match="activation"):
        Classifier(activation="swish")
    with pytest.raises(sl.ScratchError, match="std"):
        Classifier(std=[1, 0, 1, 1])


# ---- training ----------------------------------------------------------------------------
def test_reaches_95_percent_validation_accuracy_from_a_fixed_seed(trained):
    model, result = trained
    assert result.val_accuracy >= 0.95
    # Independent of the training run's own bookkeeping: fresh data it never saw.
    X, y = make_leaves_and_flowers(2000, np.random.default_rng(12345))
    assert np.mean(model.predict(X) == y) >= 0.95
    assert model.predict([[32, 107, 56, 11.2], [241, 200, 4, 59.5]]).tolist() == [0, 1]


def test_same_seed_same_model():
    a, _ = train_classifier(seed=3, epochs=5)
    b, _ = train_classifier(seed=3, epochs=5)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)


def test_scaling_uses_the_training_split(trained):
    model, _ = trained
    rng = np.random.default_rng(0)                 # train_classifier's own sequence of draws
    X, y = make_leaves_and_flowers(1000, rng)
    (Xt, _), _ = split(X, y, 0.2, rng)
    np.testing.assert_allclose(model.mean, Xt.mean(axis=0))
    np.testing.assert_allclose(model.std, Xt.std(axis=0))


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(2)
    X, y = make_leaves_and_flowers(300, rng)
    train, val = split(X, y, 0.3, rng)
    model = Classifier(hidden=(16,), mean=train[0].mean(0), std=train[0].std(0), rng=rng)
    result = fit(model, train, val, epochs=400, lr=0.3, patience=5, rng=rng)
    val_losses = [r["val_loss"] for r in result.history]
    assert result.stopped_early and len(val_losses) < 400
    best = int(np.argmin(val_losses))
    assert result.best_epoch == best + 1
    assert len(val_losses) - result.best_epoch == 5              # stopped `patience` epochs after the best
    assert min(val_losses[best + 1:]) >= val_losses[best]         # nothing after it was better
    loss, acc = evaluate(model, *val)
    assert loss == pytest.approx(val_losses[best], rel=1e-6)      # the model holds the best epoch's weights
    assert acc == result.val_accuracy


# ---- saving ----------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(trained, tmp_path):
    model, _ = trained
    sl.save(model, tmp_path / "clf")
    back = sl.load(tmp_path / "clf")
    assert isinstance(back, Classifier)
    X, _ = make_leaves_and_flowers(50, np.random.default_rng(9))
    np.testing.assert_array_equal(back(X).data, model(X).data)
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["model"] == "classifier" and config["format_version"] == 1
    assert config["config"]["input_mean"] == model.mean.tolist()   # the scaling is part of the model


def test_broken_checkpoints_are_clear_errors(trained, tmp_path):
    model, _ = trained
    with pytest.raises(sl.ScratchError, match="does not exist"):
        sl.load(tmp_path / "missing")

    def fresh(name):
        return sl.save(model, tmp_path / name)

    d = fresh("weights")
    (d / "model.safetensors").write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(sl.ScratchError, match="corrupt"):
        sl.load(d)

    d = fresh("noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(sl.ScratchError, match="missing"):
        sl.load(d)

    d = fresh("config")
    (d / "config.json").write_text("{ not json")
    with pytest.raises(sl.ScratchError, match="corrupt"):
        sl.load(d)

    d = fresh("kind")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model": "perceptron"}))
    with pytest.raises(sl.ScratchError, match="unknown kind"):
        sl.load(d)

    d = fresh("shape")
    (d / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "hidden": [16]}}))
    with pytest.raises(sl.ScratchError, match="shape"):
        sl.load(d)
