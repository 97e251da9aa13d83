"""Two mini-batch learners: scikit-learn's SGD logistic regression and a small numpy MLP.

The linear model is what the issue's first look used; the MLP is there because the article's
claim is about trained networks, whose hidden layers are more sensitive to input scale.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bench.seed_claim.data import FloatArray, IntArray


class Learner(Protocol):
    def partial_fit(self, x: FloatArray, y: IntArray) -> None: ...

    def predict(self, x: FloatArray) -> IntArray: ...


class SGDLogistic:
    """``SGDClassifier(loss="log_loss")`` with its defaults, one ``partial_fit`` per batch."""

    def __init__(self, n_classes: int, seed: int) -> None:
        from sklearn.linear_model import SGDClassifier

        self.classes = np.arange(n_classes)
        self.model = SGDClassifier(loss="log_loss", random_state=seed)

    def partial_fit(self, x: FloatArray, y: IntArray) -> None:
        self.model.partial_fit(x, y, classes=self.classes)

    def predict(self, x: FloatArray) -> IntArray:
        return np.asarray(self.model.predict(x), dtype=np.int64)


class NumpyMLP:
    """One hidden ReLU layer, softmax output, SGD with momentum and a fixed learning rate.

    The gradient norm is clipped so that raw, badly scaled inputs train badly instead of
    overflowing to NaN: the comparison is then about accuracy, not about crashes.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        seed: int,
        *,
        hidden: int = 32,
        lr: float = 0.05,
        momentum: float = 0.9,
        clip: float = 5.0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0.0, np.sqrt(2.0 / n_features), (n_features, hidden))
        self.b1 = np.zeros(hidden)
        self.w2 = rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, n_classes))
        self.b2 = np.zeros(n_classes)
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.velocity = [np.zeros_like(p) for p in self.params]
        self.lr, self.momentum, self.clip = lr, momentum, clip
        self.n_classes = n_classes

    def _forward(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return h, h @ self.w2 + self.b2

    def partial_fit(self, x: FloatArray, y: IntArray) -> None:
        h, logits = self._forward(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(y.size), y] -= 1.0
        g_out = p / y.size
        g_h = (g_out @ self.w2.T) * (h > 0)
        grads = [x.T @ g_h, g_h.sum(0), h.T @ g_out, g_out.sum(0)]
        norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads)))
        if not np.isfinite(norm):
            return  # a non-finite input batch: skip it rather than poison the weights
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        for i, g in enumerate(grads):
            # In place: self.w1 etc. are the same arrays as self.params[i].
            self.velocity[i] *= self.momentum
            self.velocity[i] -= self.lr * factor * g
            self.params[i] += self.velocity[i]

    def predict(self, x: FloatArray) -> IntArray:
        _, logits = self._forward(x)
        return np.asarray(np.nan_to_num(logits, nan=-np.inf).argmax(axis=1), dtype=np.int64)


def make_learner(name: str, n_features: int, n_classes: int, seed: int) -> Learner:
    if name == "sgd":
        return SGDLogistic(n_classes, seed)
    if name == "mlp":
        return NumpyMLP(n_features, n_classes, seed)
    raise ValueError(f"unknown model {name!r}; valid: sgd, mlp")
