"""Random parameter values for parity and gradient tests."""
import numpy as np


def scramble(model, seed=0):
    """Give every parameter random values of a working scale (initialisation
    leaves biases at 0 and norms at 1, which would hide mistakes in their gradients)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.ndim == 2:
            values = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        elif name.endswith("weight"):  # layer norm scale
            values = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            values = 0.2 * rng.standard_normal(p.shape)
        p.data[...] = values.astype(p.dtype)
    return model
