"""A made-up but plausible data set for the leaf / flower classifier.

Each example is what a person might measure: the colour as 8-bit R, G, B and
the volume in cm³. Leaves are mostly green and small, flowers colourful and
larger, but not always: autumn leaves are red, orange or yellow, a few flowers
are green, and the volumes overlap. So no single feature decides, and a
little of the data cannot be told apart at all: even the best possible rule
(knowing how the data was made) is right about 98.5% of the time, a straight
line through the inputs about 97%.

Everything is drawn from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import numpy as np

INPUTS = ("R", "G", "B", "volume")
CLASSES = ("leaf", "flower")
LEAF, FLOWER = 0, 1

# (R, G, B) centres and how often each kind occurs within its class.
LEAF_COLOURS = {                     # share
    "green": ((55, 120, 50), 0.55),
    "dark green": ((30, 80, 35), 0.20),
    "autumn red": ((180, 50, 30), 0.08),
    "autumn orange": ((215, 120, 30), 0.09),
    "autumn yellow": ((220, 190, 60), 0.08),
}
FLOWER_COLOURS = {
    "yellow": ((240, 200, 20), 0.20),
    "red": ((215, 30, 45), 0.15),
    "pink": ((240, 140, 180), 0.15),
    "white": ((240, 238, 230), 0.14),
    "purple": ((130, 60, 170), 0.12),
    "blue": ((70, 100, 200), 0.08),
    "orange": ((245, 135, 25), 0.10),
    "green": ((120, 165, 80), 0.06),
}
COLOUR_NOISE = 22.0                  # std of each channel around its centre
LEAF_VOLUME = (12.0, 0.45)           # median cm³, spread of log(volume)
FLOWER_VOLUME = (50.0, 0.50)


def _colours(table, n, rng):
    """n (R, G, B) rows: pick a colour kind by its share, add noise, clip to 0..255."""
    centres = np.array([c for c, _ in table.values()], dtype=np.float64)     # (K, 3)
    shares = np.array([s for _, s in table.values()])
    kind = rng.choice(len(centres), size=n, p=shares / shares.sum())         # (n,)
    rgb = centres[kind] + rng.normal(0.0, COLOUR_NOISE, size=(n, 3))          # (n, 3)
    return np.clip(np.rint(rgb), 0, 255)                                      # whole 8-bit values


def _volumes(median, spread, n, rng):
    return np.round(median * np.exp(rng.normal(0.0, spread, size=n)), 1)     # (n,) cm³, 0.1 precision


def make_leaves_and_flowers(n: int, rng: np.random.Generator):
    """n examples, about half of each class, in random order.

    Returns X (n, 4) float64 columns R, G, B, volume and y (n,) int64 with
    0 = leaf, 1 = flower.
    """
    y = (rng.random(n) < 0.5).astype(np.int64)                                # (n,)
    X = np.empty((n, 4))
    n_leaf, n_flower = int((y == LEAF).sum()), int((y == FLOWER).sum())
    X[y == LEAF, :3] = _colours(LEAF_COLOURS, n_leaf, rng)
    X[y == LEAF, 3] = _volumes(*LEAF_VOLUME, n_leaf, rng)
    X[y == FLOWER, :3] = _colours(FLOWER_COLOURS, n_flower, rng)
    X[y == FLOWER, 3] = _volumes(*FLOWER_VOLUME, n_flower, rng)
    return X, y


def split(X, y, val_fraction: float, rng: np.random.Generator):
    """Shuffle, then hold out ``val_fraction`` of the examples for validation."""
    order = rng.permutation(len(y))
    n_val = int(round(len(y) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (X[train], y[train]), (X[val], y[val])
