"""The data of the experiment: scikit-learn's bundled digits and two synthetic streams.

Nothing is downloaded. Each stream is a list of ``(x, y)`` mini-batches in time order.

* ``drift``: 4 classes are Gaussian clusters in a latent space; each observed feature is
  ``mu_j(t) + s_j(t) * z_j``, where ``mu`` and ``s`` move steadily over the stream and jump
  once (a recalibrated sensor). In the raw feature space the class boundary therefore moves
  with the means and scales, while in the latent space it stays put: a normalizer that
  tracks ``mu`` and ``s`` turns the problem back into a stationary one. This is the case
  EMA normalization is made for.
* ``labelmix``: the features of each class never change, only the class mix does (class 0
  goes from a quarter of the rows to most of them). Batch means move because of the labels,
  not because of the sensors, so an EMA normalizer moves the inputs under a classifier
  that was right. This is the case where a static scaler should be the better choice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Batch = tuple[FloatArray, IntArray]

N_CLASSES = 4
N_FEATURES = 16


@dataclass(frozen=True)
class Split:
    """A train / test split of a fixed dataset (digits)."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


@functools.cache
def _digits() -> tuple[FloatArray, IntArray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def digits_split(seed: int, test_size: float = 0.25) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 rows, 64 pixel features 0..16), stratified."""
    from sklearn.model_selection import train_test_split

    x, y = _digits()
    xa, xb, ya, yb = train_test_split(
        x,
        y,
        test_size=test_size,
        stratify=y,
        random_state=seed,
    )
    return Split(xa, ya, xb, yb)


def _latent(rng: np.random.Generator, centers: FloatArray, y: IntArray) -> FloatArray:
    return np.asarray(centers[y] + rng.normal(size=(y.size, centers.shape[1])))


def _centers(rng: np.random.Generator, spread: float) -> FloatArray:
    # Spread chosen so that the classes overlap (accuracy in the high 0.8s, not 1.0):
    # an easy problem would hide any difference between the normalizers.
    return np.asarray(rng.normal(0.0, spread, size=(N_CLASSES, N_FEATURES)))


def _sensors(rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    # Means far from 0 and scales spread over three decades: what raw sensor columns look
    # like, and why raw features train badly with SGD.
    mu0 = rng.normal(0.0, 50.0, N_FEATURES)
    s0 = 10.0 ** rng.uniform(-1.0, 2.0, N_FEATURES)
    return mu0, s0


def drift_stream(
    seed: int, n_batches: int = 300, batch_size: int = 64, jump_at: float = 0.6
) -> tuple[list[Batch], int]:
    """Batches whose feature means and scales drift, and jump once; returns the jump batch."""
    rng = np.random.default_rng(seed)
    centers = _centers(rng, 0.7)
    mu0, s0 = _sensors(rng)
    # Over the whole stream each mean moves ~4 of its initial sds and each scale changes
    # by up to e^1.5 either way.
    velocity = rng.normal(0.0, 4.0, N_FEATURES)
    log_rate = rng.uniform(-1.5, 1.5, N_FEATURES)
    jumped = rng.random(N_FEATURES) < 0.5
    jump_shift = np.where(jumped, rng.choice([-3.0, 3.0], N_FEATURES), 0.0)
    jump_scale = np.where(jumped, rng.choice([0.5, 2.0], N_FEATURES), 1.0)
    jump_batch = round(jump_at * n_batches)
    batches: list[Batch] = []
    for t in range(n_batches):
        frac = t / max(n_batches - 1, 1)
        mu = mu0 + s0 * velocity * frac
        s = s0 * np.exp(log_rate * frac)
        if t >= jump_batch:
            mu = mu + jump_shift * s
            s = s * jump_scale
        y = rng.integers(0, N_CLASSES, size=batch_size).astype(np.int64)
        x = mu + s * _latent(rng, centers, y)
        batches.append((np.asarray(x, dtype=np.float64), y))
    return batches, jump_batch


def labelmix_stream(seed: int, n_batches: int = 200, batch_size: int = 64) -> list[Batch]:
    """Fixed class-conditional features; class 0 goes from 25% of the rows to 70% and back."""
    rng = np.random.default_rng(seed)
    centers = _centers(rng, 0.7)
    mu0, s0 = _sensors(rng)
    batches: list[Batch] = []
    for t in range(n_batches):
        # A triangle: balanced, then class 0 dominates mid-stream, then balanced again.
        p0 = 0.25 + 0.45 * (1.0 - abs(2.0 * t / max(n_batches - 1, 1) - 1.0))
        probs = np.array([p0] + [(1.0 - p0) / (N_CLASSES - 1)] * (N_CLASSES - 1))
        y = rng.choice(N_CLASSES, size=batch_size, p=probs).astype(np.int64)
        x = mu0 + s0 * _latent(rng, centers, y)
        batches.append((np.asarray(x, dtype=np.float64), y))
    return batches
