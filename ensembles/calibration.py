"""Per-class probability calibration fitted on development predictions: temperature or isotonic.

temperature: p' = sigmoid(logit(p) / T_c), T_c minimising the class's binary log-loss on known labels
(scipy's bounded scalar search over log T). It keeps every class's ranking, so AP and AUROC are
unchanged and only ECE and threshold metrics (F1 at 0.5) move.
isotonic: sklearn's IsotonicRegression per class; the fitted step function is stored as its knots and
applied with np.interp, which is what IsotonicRegression.predict does with out_of_bounds="clip". It
can merge scores into ties and so change AP slightly.
A class whose fitting rows lack positives or negatives is left as is (T = 1, identity knots).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from ensembles.combiners import member_logits

CalibrationMethod = Literal["none", "temperature", "isotonic"]
LOG_T_BOUNDS = (-4.0, 4.0)
T = TypeVar("T")


def _log_loss(logits: np.ndarray, labels: np.ndarray, log_t: float) -> float:
    z = logits / np.exp(log_t)
    # log(1 + e^z) - y z, written with logaddexp to stay finite for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


@dataclass
class Calibrator:
    method: CalibrationMethod = "temperature"
    temperature: list[float] | None = None
    knots: list[tuple[list[float], list[float]]] | None = None
    fitted_classes: list[bool] = field(default_factory=list)

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Calibrator:
        n_classes = probs.shape[1]
        self.temperature = [1.0] * n_classes
        self.knots = [([0.0, 1.0], [0.0, 1.0]) for _ in range(n_classes)]
        self.fitted_classes = [False] * n_classes
        if self.method == "none":
            return self
        for c in range(n_classes):
            known = labels[:, c] != -1
            y, p = labels[known, c].astype(np.float64), probs[known, c].astype(np.float64)
            if y.size == 0 or y.min() == y.max():
                continue
            self.fitted_classes[c] = True
            if self.method == "temperature":
                z = member_logits(p)
                found = minimize_scalar(lambda t, z=z, y=y: _log_loss(z, y, t), bounds=LOG_T_BOUNDS, method="bounded")
                self.temperature[c] = float(np.exp(found.x))
            else:
                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
                self.knots[c] = (iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())
        return self

    def predict(self, probs: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return probs
        out = np.empty_like(probs, dtype=np.float32)
        if self.method == "temperature":
            temperature = self._fitted(self.temperature)
            for c in range(probs.shape[1]):
                out[:, c] = expit(member_logits(probs[:, c]) / temperature[c])
        else:
            knots = self._fitted(self.knots)
            for c in range(probs.shape[1]):
                xs, ys = knots[c]
                out[:, c] = np.interp(probs[:, c], xs, ys)
        return out

    def _fitted(self, value: T | None) -> T:
        if value is None:
            raise RuntimeError(f"calibrator {self.method!r} is not fitted: fit it, or load it from a fitted state")
        return value

    def state(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "temperature": self.temperature,
            "knots": [[list(x), list(y)] for x, y in self.knots or []],
            "fitted_classes": self.fitted_classes,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibrator:
        return cls(
            method=state["method"],
            temperature=state["temperature"],
            knots=[(x, y) for x, y in state["knots"]],
            fitted_classes=state["fitted_classes"],
        )
