"""Scaling-law forms L(N, D): their log-space parametrisation, gradients, start grids and closed forms.

Two forms (docs/fit.md, "Formulas"):

* `chinchilla` — Hoffmann et al. 2022, eq. 2: L(N, D) = E + A/N^α + B/D^β. Fitted as Hoffmann et al.
  describe (their appendix D.2) and Besiroglu et al. 2024 replicate: in log space,
      log L̂ = LSE(a − α·log N, b − β·log D, e),   A = e^a, B = e^b, E = e^e,
  minimising the Huber loss (δ = 1e-3) of the residuals log L̂ − log L, summed over points, with
  L-BFGS from a grid of starts (α, β ∈ {0, 0.5, …, 2}; e ∈ {−1, −0.5, …, 1}; a, b ∈ {0, 5, …, 25}).
* `kaplan` — Kaplan et al. 2020, eq. 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, fitted the same way:
      log L̂ = α_D · LSE(p·(n_c − log N), d_c − log D),   p = α_N/α_D, N_c = e^n_c, D_c = e^d_c.
  It has no irreducible loss, which is exactly where tiny models show the forms apart.

Each form is a model of `gerbil.fit.optim` (the fitted quantity is log L̂, the inputs log N and log D);
the fit itself is `gerbil.fit.laws.fit_law`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from gerbil.errors import GerbilError


# ---------------------------------------------------------------------------------------------- forms
class Form:
    """A functional form L(N, D): its log-space parametrisation θ, gradient, start grid, and the
    closed forms the reports need. `params` dicts may hold arrays (one value per bootstrap sample)."""

    name: str = ""
    theta_names: tuple[str, ...] = ()  # the optimised (log-space) parameters
    param_names: tuple[str, ...] = ()  # the published parameters, same length and order
    bounds: tuple[tuple[float | None, float | None], ...] = ()

    @property
    def k(self) -> int:
        return len(self.theta_names)

    def grid(self) -> np.ndarray:  # (G, k) starting points
        raise NotImplementedError

    def log_pred(self, theta: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log L̂ (n,), Jacobian ∂ log L̂/∂θ (n, k))."""
        raise NotImplementedError

    def grid_log_pred(self, grid: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> np.ndarray:
        """log L̂ for every start at once: (G, n)."""
        raise NotImplementedError

    # the `gerbil.fit.optim` model interface: the fitted quantity ŷ is log L̂, the inputs (log N, log D)
    def pred(self, theta: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.log_pred(theta, lN, lD)

    def grid_pred(self, grid: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> np.ndarray:
        return self.grid_log_pred(grid, lN, lD)

    def to_params(self, theta: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def to_theta(self, params: dict[str, float]) -> np.ndarray:
        raise NotImplementedError

    def log_predict(self, params: dict[str, Any], N: Any, D: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, params: dict[str, Any], N: Any, D: Any) -> np.ndarray:
        """Predicted loss at N parameters and D tokens."""
        return np.exp(self.log_predict(params, N, D))

    def exponents(self, params: dict[str, Any]) -> tuple[Any, Any]:
        """(a, b) with N_opt ∝ C^a and D_opt ∝ C^b when compute is C = 6·N·D."""
        raise NotImplementedError

    def optimal_n(self, params: dict[str, Any], C: Any) -> np.ndarray:
        """Compute-optimal N at C = 6·N·D FLOPs (D_opt = C / (6·N_opt))."""
        raise NotImplementedError

    def optimal_tokens(self, params: dict[str, Any], N: Any) -> np.ndarray:
        """The D at which a model of N parameters is compute-optimal (C = 6·N·D): the tokens a
        frontier model of that size trains on."""
        raise NotImplementedError

    def tokens_for_loss(self, params: dict[str, Any], N: Any, loss: float) -> np.ndarray:
        """Tokens a model of N parameters needs to reach `loss` (inf where it never does)."""
        raise NotImplementedError

    def floor(self, params: dict[str, Any]) -> float:
        """The loss no (N, D) goes below."""
        raise NotImplementedError


class Chinchilla(Form):
    """L = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2); θ = (a, b, e, α, β)."""

    name = "chinchilla"
    theta_names = ("a", "b", "e", "alpha", "beta")
    param_names = ("E", "A", "B", "alpha", "beta")
    bounds = ((None, None),) * 5  # unconstrained, as Hoffmann et al.

    def grid(self) -> np.ndarray:
        # Hoffmann et al. 2022 appendix D.2 (as replicated by Besiroglu et al. 2024)
        ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
        e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
        ex = np.arange(0.0, 2.0 + 1e-9, 0.5)
        g = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)  # (6·6·5·5·5 = 4500, 5)

    def log_pred(self, theta, lN, lD):
        a, b, e, alpha, beta = theta
        t1 = a - alpha * lN  # (n,) log(A/N^α)
        t2 = b - beta * lD  # (n,) log(B/D^β)
        m = np.maximum(np.maximum(t1, t2), e)
        x1, x2, x3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
        s = x1 + x2 + x3
        w1, w2, w3 = x1 / s, x2 / s, x3 / s  # softmax weights = ∂LSE/∂t_i
        jac = np.stack([w1, w2, w3, -w1 * lN, -w2 * lD], axis=1)  # (n, 5)
        return m + np.log(s), jac

    def grid_log_pred(self, grid, lN, lD):
        a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))  # each (G, 1)
        t = np.stack(np.broadcast_arrays(a - alpha * lN, b - beta * lD, e + 0 * lN))  # (3, G, n)
        m = t.max(axis=0)
        return m + np.log(np.exp(t - m).sum(axis=0))

    def to_params(self, theta):
        a, b, e, alpha, beta = (theta[..., i] for i in range(5))
        with np.errstate(over="ignore"):  # a runaway log-coefficient becomes inf, which the fit reports as degenerate
            return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}

    def to_theta(self, p):
        return np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]], float)

    def log_predict(self, p, N, D):
        lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        t = np.stack(np.broadcast_arrays(np.log(p["A"]) - p["alpha"] * lN, np.log(p["B"]) - p["beta"] * lD,
                                         np.log(p["E"]) + 0 * lN))
        m = t.max(axis=0)
        with np.errstate(invalid="ignore", over="ignore"):  # an inf coefficient gives NaN: judged degenerate, not warned
            return m + np.log(np.exp(t - m).sum(axis=0))

    def exponents(self, p):
        s = p["alpha"] + p["beta"]
        return p["beta"] / s, p["alpha"] / s  # Hoffmann et al. 2022, eq. 4

    def optimal_n(self, p, C):
        # N_opt = G·(C/6)^a, G = (αA/(βB))^(1/(α+β))  (Hoffmann et al. 2022, eq. 4)
        a, _ = self.exponents(p)
        # α, β are unconstrained (as Hoffmann et al.): a bootstrap refit with α ≤ 0 or β ≤ 0 has no
        # compute-optimal size — NaN, which `LawFit.interval` leaves out — not a warning per resample
        with np.errstate(divide="ignore", invalid="ignore"):
            log_g = (np.log(p["alpha"] * p["A"]) - np.log(p["beta"] * p["B"])) / (p["alpha"] + p["beta"])
            return np.exp(log_g + a * np.log(np.asarray(C, float) / 6.0))

    def optimal_tokens(self, p, N):
        # on the frontier α·A/N^α = β·B/D^β (∂L/∂log N = ∂L/∂log D along C = 6ND)
        lN = np.log(np.asarray(N, float))
        with np.errstate(divide="ignore", invalid="ignore"):  # α or β ≤ 0: no frontier (NaN), as above
            return np.exp((np.log(p["beta"] * p["B"]) - np.log(p["alpha"] * p["A"]) + p["alpha"] * lN) / p["beta"])

    def tokens_for_loss(self, p, N, loss):
        rest = loss - p["E"] - p["A"] * np.asarray(N, float) ** (-p["alpha"])
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (p["B"] / rest) ** (1.0 / p["beta"])
        return np.where(rest > 0, d, np.inf)

    def floor(self, p):
        return float(p["E"])


class Kaplan(Form):
    """L = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5); θ = (n_c, d_c, α_N, α_D)."""

    name = "kaplan"
    theta_names = ("n_c", "d_c", "alpha_N", "alpha_D")
    param_names = ("N_c", "D_c", "alpha_N", "alpha_D")
    bounds = ((None, None), (None, None), (1e-6, None), (1e-6, None))  # p = α_N/α_D needs α_D > 0

    def grid(self) -> np.ndarray:
        # Kaplan et al. 2020 found α_N ≈ 0.076, α_D ≈ 0.095, N_c ≈ 8.8e13, D_c ≈ 5.4e13 (ln ≈ 32)
        lc = np.arange(5.0, 40.0 + 1e-9, 5.0)
        ex = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
        g = np.meshgrid(lc, lc, ex, ex, indexing="ij")
        return np.stack([x.ravel() for x in g], axis=1)  # (8·8·5·5 = 1600, 4)

    def log_pred(self, theta, lN, lD):
        n_c, d_c, a_n, a_d = theta
        p = a_n / a_d
        u1 = p * (n_c - lN)  # log (N_c/N)^p
        u2 = d_c - lD  # log D_c/D
        m = np.maximum(u1, u2)
        x1, x2 = np.exp(u1 - m), np.exp(u2 - m)
        s = x1 + x2
        S = m + np.log(s)
        w1, w2 = x1 / s, x2 / s
        jac = np.stack([w1 * a_n, w2 * a_d, w1 * (n_c - lN), S - w1 * u1], axis=1)  # (n, 4)
        return a_d * S, jac

    def grid_log_pred(self, grid, lN, lD):
        n_c, d_c, a_n, a_d = (grid[:, i:i + 1] for i in range(4))
        return a_d * np.logaddexp(a_n / a_d * (n_c - lN), d_c - lD)

    def to_params(self, theta):
        n_c, d_c, a_n, a_d = (theta[..., i] for i in range(4))
        return {"N_c": np.exp(n_c), "D_c": np.exp(d_c), "alpha_N": a_n, "alpha_D": a_d}

    def to_theta(self, p):
        return np.array([math.log(p["N_c"]), math.log(p["D_c"]), p["alpha_N"], p["alpha_D"]], float)

    def log_predict(self, p, N, D):
        lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        return p["alpha_D"] * np.logaddexp(p["alpha_N"] / p["alpha_D"] * (np.log(p["N_c"]) - lN),
                                           np.log(p["D_c"]) - lD)

    def exponents(self, p):
        s = p["alpha_N"] + p["alpha_D"]
        return p["alpha_D"] / s, p["alpha_N"] / s

    def optimal_n(self, p, C):
        # minimise (N_c/N)^p + 6·D_c·N/C over N: N^(1+p) = p·N_c^p·C/(6·D_c)
        q = p["alpha_N"] / p["alpha_D"]
        lC = np.log(np.asarray(C, float))
        return np.exp((np.log(q) + q * np.log(p["N_c"]) + lC - np.log(6.0 * p["D_c"])) / (1.0 + q))

    def optimal_tokens(self, p, N):
        # the same condition with C = 6ND: D = D_c·N^p / (p·N_c^p)
        q = p["alpha_N"] / p["alpha_D"]
        lN = np.log(np.asarray(N, float))
        return np.exp(np.log(p["D_c"]) + q * (lN - np.log(p["N_c"])) - np.log(q))

    def tokens_for_loss(self, p, N, loss):
        q = p["alpha_N"] / p["alpha_D"]
        rest = loss ** (1.0 / p["alpha_D"]) - (p["N_c"] / np.asarray(N, float)) ** q
        with np.errstate(divide="ignore", invalid="ignore"):
            d = p["D_c"] / rest
        return np.where(rest > 0, d, np.inf)

    def floor(self, p):
        return 0.0


FORMS: dict[str, Form] = {f.name: f for f in (Chinchilla(), Kaplan())}


def get_form(name: str) -> Form:
    """A form by name ("chinchilla" or "kaplan")."""
    try:
        return FORMS[str(name).lower()]
    except KeyError:
        raise GerbilError(f"unknown form {name!r} (known: {', '.join(FORMS)})") from None
