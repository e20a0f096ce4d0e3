"""Each client's time as a line learned online: ``seconds = w0 + w1 * x`` with uncertainty.

``bandit`` keeps two per client: compute seconds against reference-seconds of local work
(steps times the reference step time at its bits: w1 is the client's compute factor), and
non-compute seconds against rank (w0 round trips, w1 seconds per rank unit on its links).
Rows of a shared ``ClientTable`` hold the sufficient statistics, so 10,000 clients update in
a handful of numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .client_table import ClientTable


@dataclass(frozen=True)
class PredictedLine:
    """y at x: mean ``m0 + m1 x``, variance ``v0 + x (v1 + v2 x)`` (weights' and noise's)."""

    m0: np.ndarray
    m1: np.ndarray
    v0: np.ndarray
    v1: np.ndarray
    v2: np.ndarray

    def mean(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(self.m0 + self.m1 * x, 0.0)

    def var(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(self.v0 + x * (self.v1 + self.v2 * x), 0.0)


class OnlineLinearTime:
    """``y = w0 + w1 * x`` per client (a table row), Bayesian, forgetting old rounds.

    Gaussian prior N(m, diag(sd^2)) per row; each observation is weighted by the row's noise
    precision. Before each update the posterior's precision decays by ``forgetting`` toward the
    prior's (stabilised forgetting: the posterior never gets more certain than ~1/(1-forgetting)
    recent rounds allow, and never looser than the prior), keeping its mean: forgetting loosens
    what is known, it does not pull it back to the prior's guess, so a prior off by any factor
    is left behind within a few reports (decaying toward the prior's mean as well kept a prior
    10x off biased for good). The noise variance is an exponential average of squared errors
    left after each update. Columns live in a shared ``ClientTable``.
    """

    FIELDS = ("p00", "p01", "p11", "h0", "h1", "prior_p00", "prior_p11", "prior_h0", "prior_h1", "noise_var")

    def __init__(
        self,
        table: ClientTable,
        prefix: str,
        forgetting: float = 0.8,
        noise_smoothing: float = 0.7,
        min_noise_cv: float = 0.02,
    ) -> None:
        self.table = table
        self.prefix = prefix
        self.forgetting = forgetting
        self.noise_smoothing = noise_smoothing
        self.min_noise_cv = min_noise_cv

    @classmethod
    def column_defaults(cls, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}{name}": 1.0 if name in ("p00", "p11", "prior_p00", "prior_p11", "noise_var") else 0.0
            for name in cls.FIELDS
        }

    def _col(self, name: str) -> np.ndarray:
        return self.table.columns[self.prefix + name]

    def set_prior(self, rows: np.ndarray, mean0: float, sd0: float, mean1: float, sd1: float, noise_sd: float) -> None:
        p00, p11 = 1.0 / sd0**2, 1.0 / sd1**2
        values = {
            "p00": p00,
            "p01": 0.0,
            "p11": p11,
            "h0": p00 * mean0,
            "h1": p11 * mean1,
            "prior_p00": p00,
            "prior_p11": p11,
            "prior_h0": p00 * mean0,
            "prior_h1": p11 * mean1,
            "noise_var": max(noise_sd, 1e-6) ** 2,
        }
        for name, value in values.items():
            self._col(name)[rows] = value

    def _posterior(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Mean (m0, m1) and covariance (s00, s01, s11) of the weights."""
        p00, p01, p11 = self._col("p00")[rows], self._col("p01")[rows], self._col("p11")[rows]
        h0, h1 = self._col("h0")[rows], self._col("h1")[rows]
        det = p00 * p11 - p01 * p01
        s00, s01, s11 = p11 / det, -p01 / det, p00 / det
        return s00 * h0 + s01 * h1, s01 * h0 + s11 * h1, s00, s01, s11

    def line(self, rows: np.ndarray) -> PredictedLine:
        """The predictive line of these rows (the posterior is read once)."""
        m0, m1, s00, s01, s11 = self._posterior(rows)
        m1 = np.maximum(m1, 0.05 * self._col("prior_h1")[rows] / self._col("prior_p11")[rows])  # time grows with x
        return PredictedLine(m0, m1, s00 + self._col("noise_var")[rows], 2.0 * s01, s11)

    def update(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        if rows.size == 0:
            return
        weight = 1.0 / self._col("noise_var")[rows]
        lam = self.forgetting
        m0, m1, *_ = self._posterior(rows)
        p00, p01, p11, h0, h1 = (self._col(n) for n in ("p00", "p01", "p11", "h0", "h1"))
        # Forget: precision blends toward the prior's, the mean stays (h = precision @ mean).
        d00 = lam * p00[rows] + (1 - lam) * self._col("prior_p00")[rows]
        d01 = lam * p01[rows]
        d11 = lam * p11[rows] + (1 - lam) * self._col("prior_p11")[rows]
        p00[rows] = d00 + weight
        p01[rows] = d01 + weight * x
        p11[rows] = d11 + weight * x * x
        h0[rows] = d00 * m0 + d01 * m1 + weight * y
        h1[rows] = d01 * m0 + d11 * m1 + weight * x * y
        # The error left after the update is noise; the part the update explained was the
        # model being wrong (a bad prior), which the mean has now absorbed.
        m0, m1, *_ = self._posterior(rows)
        error = y - (m0 + m1 * x)
        noise = self._col("noise_var")
        rho = self.noise_smoothing
        noise[rows] = np.maximum(rho * noise[rows] + (1 - rho) * error * error, (self.min_noise_cv * y) ** 2 + 1e-12)
