"""Law forms: pure, vectorised functions with a parameter spec, in one registry.

Every form maps raw features (n0 in parameters, tokens in tokens) to a predicted loss and knows
how to be fitted: a fit vector in log space where a constant is positive, bounds, a grid of
starting points and the log-prediction with its analytic Jacobian, evaluated for many fit
vectors at once (shape ``(starts, points)``). Fitting, metrics and recommendations only use this
interface, so registering a new form with `register` touches nothing else.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.law.errors import LawError, UnknownForm
from app.law.objective import huber
from app.law.types import Dataset, Features, FloatArray, IntArray, Params, Rule

BoolArray = npt.NDArray[np.bool_]

# exp() of anything above this overflows float64; predictions are clipped here rather than
# returning inf (a loss of e^700 nats is already meaningless).
_LOG_MAX = 700.0
# Bounds of docs/law.md §4, shared by every form that has the same kind of parameter.
LOG_CONSTANT_BOUNDS = (-25.0, 25.0)
DECAY_BOUNDS = (0.0, 3.0)
SIGNED_BOUNDS = (-3.0, 3.0)


def check_features(x: Features) -> None:
    """Raise LawError unless every feature is finite and inside the law's domain."""
    n = len(x)
    for name in ("n0", "rho", "l0", "tokens"):
        values = getattr(x, name)
        if values.shape != (n,):
            raise LawError(f"{name} has shape {values.shape}; expected ({n},) like n0")
    # Every prediction runs this: valid features pass in one test per column with the arrays'
    # own methods (np.all and np.any cost a Python-level dispatch each, which made up most of
    # the check on a 100-point request). A comparison with NaN is False, and ρ in (0, 1) is
    # finite. Anything else takes the checks below, which say what is wrong.
    if (
        (x.n0 > 0).all()
        and ((x.rho > 0) & (x.rho < 1)).all()
        and (x.l0 > 0).all()
        and (x.tokens > 0).all()
        and np.isfinite(x.n0).all()
        and np.isfinite(x.l0).all()
        and np.isfinite(x.tokens).all()
    ):
        return
    for name in ("n0", "rho", "l0", "tokens"):
        if not np.all(np.isfinite(getattr(x, name))):
            raise LawError(f"{name} must be finite")
    if np.any(x.n0 <= 0):
        raise LawError("n0 must be positive (parameters of the dense model)")
    if np.any((x.rho <= 0) | (x.rho >= 1)):
        raise LawError("rho must lie strictly between 0 and 1")
    if np.any(x.l0 <= 0):
        raise LawError("l0 must be positive (nats per token)")
    if np.any(x.tokens <= 0):
        raise LawError("tokens must be positive: the law is defined for D > 0 only")


def logsumexp_terms(terms: list[FloatArray]) -> tuple[FloatArray, list[FloatArray]]:
    """log Σ exp(tᵢ) over broadcastable terms, and the softmax weights ∂/∂tᵢ.

    Terms may be −inf (a constant that is exactly zero); when all are, the result is −inf and
    the weights are zero, never NaN. Written term by term (no stacking): this runs thousands of
    times per fit, on arrays of a few hundred points, where every temporary counts.
    """
    top = terms[0]
    for t in terms[1:]:
        top = np.maximum(top, t)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite_top = np.isfinite(top)
        if not np.all(finite_top):
            top = np.where(finite_top, top, 0.0)
        expd = [np.exp(t - top) for t in terms]
        total = expd[0]
        for e in expd[1:]:
            total = total + e
        lse = np.log(total) + top
        inv = np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)
    return lse, [e * inv for e in expd]


def logsumexp_value(terms: list[FloatArray]) -> FloatArray:
    """log Σ exp(tᵢ) as `logsumexp_terms` computes it (the same arithmetic), without the
    weights: the prediction path, where only the value is needed."""
    top = terms[0]
    for t in terms[1:]:
        top = np.maximum(top, t)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite_top = np.isfinite(top)
        if not np.all(finite_top):
            top = np.where(finite_top, top, 0.0)
        total = np.exp(terms[0] - top)
        for t in terms[1:]:
            total = total + np.exp(t - top)
        return np.asarray(np.log(total) + top, dtype=np.float64)


def _col(theta: FloatArray, j: int) -> FloatArray:
    """Column j of a (starts, p) fit matrix as a (starts, 1) array that broadcasts over points."""
    return theta[:, j : j + 1]


def _p(params: Params, key: str) -> float:
    """A finite parameter value; LawError names the key otherwise."""
    if key not in params:
        raise LawError(f"law parameters lack {key!r}")
    value = float(params[key])
    if not math.isfinite(value):
        raise LawError(f"parameter {key} must be finite, got {value!r}")
    return value


def _stack(vectors: list[FloatArray], p: int) -> FloatArray:
    """Fit vectors as the rows of one (R, p) matrix (R may be 0)."""
    return np.array(vectors, dtype=np.float64).reshape(len(vectors), p)


def _check_thetas(thetas: FloatArray, p: int) -> FloatArray:
    matrix = np.asarray(thetas, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != p:
        raise LawError(f"expected fit vectors of shape (R, {p}), got {matrix.shape}")
    return matrix


#: Below this magnitude of every exponent, a prediction may leave log space: exp() of
#: ±LINEAR_BOUND is a normal float, and so is the product of two such values.
LINEAR_BOUND = 300.0


def _largest(values: FloatArray) -> float:
    """The largest magnitude in `values` (inf when there are none, which fails any bound)."""
    return float(np.abs(values).max()) if values.size else float("inf")


def _log_param(params: Params, key: str) -> float:
    if key not in params:
        raise LawError(f"law parameters lack {key!r}")
    value = float(params[key])
    if value < 0 or not math.isfinite(value):
        raise LawError(f"parameter {key} must be finite and ≥ 0, got {value!r}")
    # math rather than numpy on one float: this runs for every parameter of every prediction.
    return math.log(value) if value > 0 else -math.inf


class Form(ABC):
    """A law form. Subclasses set `name`, `param_names`, `description` and the model."""

    name: str
    param_names: tuple[str, ...]
    description: str
    # How many of the grid's best starts L-BFGS-B polishes (per block for separable forms).
    n_polish: int = 4

    # --- fit-vector interface (data-dependent only for forms with per-run parameters) ---

    def fit_names(self, data: Dataset) -> tuple[str, ...]:
        """Names of the entries of the fit vector (log constants prefixed with ``log_``)."""
        return self._fit_names

    _fit_names: tuple[str, ...] = ()
    _bounds: tuple[tuple[float, float], ...] = ()

    @property
    def nonnegative_params(self) -> tuple[str, ...]:
        """Parameters fitted as their log: a law whose value of one is negative is refused
        (`_log_param`); the others may have any sign."""
        return tuple(
            name
            for name, fit_name in zip(self.param_names, self._fit_names, strict=False)
            if fit_name == f"log_{name}"
        )

    def n_parameters(self, data: Dataset) -> int:
        """How many numbers a fit to `data` estimates."""
        return len(self.fit_names(data))

    def bounds(self, data: Dataset) -> list[tuple[float, float]]:
        """Box bounds of the fit vector, as L-BFGS-B takes them."""
        return list(self._bounds)

    @abstractmethod
    def start_grid(self, data: Dataset) -> FloatArray:
        """Starting fit vectors, shape (starts, p)."""

    @abstractmethod
    def to_vector(self, params: Params, data: Dataset) -> FloatArray:
        """Parameters (the form's own units) → fit vector (may hold −inf for a zero constant)."""

    @abstractmethod
    def from_vector(self, theta: FloatArray, data: Dataset) -> dict[str, float]:
        """Fit vector → parameters in the form's own units."""

    @abstractmethod
    def log_model(
        self, theta: FloatArray, data: Dataset, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        """log L̂ for each fit vector (rows of `theta`) at each point: (starts, n).

        With `grad`, also ∂ log L̂ / ∂θ with shape (starts, n, p).
        """

    # --- prediction ---

    @abstractmethod
    def predict(self, params: Params, x: Features) -> FloatArray:
        """Predicted loss at each point (raw counts in)."""

    @abstractmethod
    def floor(self, params: Params, x: Features) -> FloatArray:
        """The loss as tokens → ∞ at each point."""

    def predict_data(self, params: Params, data: Dataset) -> FloatArray:
        """Predicted loss for the points of a dataset (forms with per-run parameters use `run`)."""
        return self.predict(params, data.x)

    def params_matrix(self, params_list: Sequence[Params]) -> FloatArray | None:
        """Many parameter sets (e.g. bootstrap refits) as one (R, p) matrix of fit vectors for
        `predict_many`, each set converted and checked once. None for a form whose fit vector
        depends on the data (per-run parameters): `predict_sets` then predicts set by set."""
        return None

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        """Predicted loss of each fit vector (the rows of `thetas`, from `params_matrix`) at
        each point, shape (R, n): row i equals `predict` with the i-th parameter set."""
        raise LawError(f"form {self.name!r} predicts one parameter set at a time")

    def predict_sets(
        self, params_list: Sequence[Params], x: Features, thetas: FloatArray | None = None
    ) -> FloatArray:
        """Predicted losses of many parameter sets at each point, shape (R, n).

        One vectorised evaluation where the form has one (`thetas` is `params_matrix` of
        `params_list`, computed here when not given), else a loop over `predict`.
        """
        if thetas is None:
            thetas = self.params_matrix(params_list)
        if thetas is None:
            rows = [self.predict(p, x) for p in params_list]
            return np.array(rows, dtype=np.float64).reshape(len(rows), len(x))
        return self.predict_many(thetas, x)

    def check_params(self, params: Params) -> None:
        """LawError unless `params` are exactly this form's, all finite (for inline laws)."""
        missing = [p for p in self.param_names if p not in params]
        unknown = sorted(set(params) - set(self.param_names))
        if missing or unknown:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise LawError(
                f"form {self.name!r} takes parameters {', '.join(self.param_names)} "
                f"({'; '.join(parts)})"
            )
        bad = [p for p in self.param_names if not math.isfinite(float(params[p]))]
        if bad:
            raise LawError(f"parameters must be finite: {', '.join(bad)}")

    def closed_form_tokens(
        self, params: Params, x: Features, rule: Rule, value: float
    ) -> FloatArray | None:
        """Tokens a rule asks for in closed form, or None if the form has none (docs/law.md §7)."""
        return None

    def blocks(self, data: Dataset) -> list[tuple[BoolArray, slice]] | None:
        """Independent sub-problems (points, slice of the fit vector), or None for one problem."""
        return None

    def select_starts(self, data: Dataset, k: int) -> FloatArray:
        """The k best distinct starts of the grid, the whole grid evaluated at once."""
        grid = self.start_grid(data)
        values = np.empty(grid.shape[0])
        # Chunks bound the memory of the (starts, points) temporaries to a few MB each.
        chunk = max(1, 200_000 // max(len(data), 1))
        log_loss = np.log(data.loss)
        for lo in range(0, grid.shape[0], chunk):
            log_pred, _ = self.log_model(grid[lo : lo + chunk], data, grad=False)
            values[lo : lo + chunk] = np.sum(huber(log_pred - log_loss), axis=1)
        values = np.where(np.isfinite(values), values, np.inf)
        order = np.argsort(values, kind="stable")
        return grid[order[:k]]


def _p2_log_gap(
    theta: FloatArray, x: Features, ln_d: FloatArray, *, delta: bool, grad: bool
) -> tuple[FloatArray, FloatArray, FloatArray | None, FloatArray | None]:
    """P²'s gap over L0 for many fit vectors on the D axis `ln_d` (log D in billions for p2; a
    shifted axis for p2-tpp and p2-shift): log of the gap (clipped), log L̂, and with `grad` the
    Jacobian of log L̂ in (log N_C, log D_C, log E, α, β, γ[, δ]) and s·w_D, the D term's share
    of d log L̂, which a parameter inside the D axis multiplies. Without `delta` the N0 factor
    (1/N0)^δ is left out (p2-tpp)."""
    ln_n = np.log(x.n0 / 1e9)
    ln_rho = np.log(x.rho)
    a1 = _col(theta, 0) - _col(theta, 3) * ln_n
    a2 = _col(theta, 1) - _col(theta, 4) * ln_d
    a3 = np.broadcast_to(_col(theta, 2), a1.shape)
    log_g, (w1, w2, w3) = logsumexp_terms([a1, a2, a3])
    log_k = -_col(theta, 5) * ln_rho
    if delta:
        log_k = log_k - _col(theta, 6) * ln_n
    u = np.minimum(log_k + log_g, _LOG_MAX)
    log_pred = np.logaddexp(np.log(x.l0), u)
    if not grad:
        return u, log_pred, None, None
    with np.errstate(invalid="ignore"):
        s = np.where(np.isfinite(u), np.exp(u - log_pred), 0.0)
    columns = [s * w1, s * w2, s * w3, -s * w1 * ln_n, -s * w2 * ln_d, -s * ln_rho]
    if delta:
        columns.append(-s * ln_n)
    return u, log_pred, np.stack(columns, axis=-1), s * w2


def _with_axis_shift(
    gap: tuple[FloatArray, FloatArray, FloatArray | None, FloatArray | None],
    theta: FloatArray,
    w_s: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """`_p2_log_gap` on a shifted D axis, with the Jacobian column of the shift's log (the
    last fit parameter): −s·w_D·β·w_s, w_s the shift's share of the axis."""
    u, log_pred, jac, s_w2 = gap
    if jac is None or s_w2 is None:
        return u, log_pred, None
    shift = -s_w2 * _col(theta, 4) * w_s
    return u, log_pred, np.concatenate([jac, shift[..., None]], axis=-1)


class _GapOverL0Form(Form):
    """A form L = L0 + exp(u) whose subclass gives `_log_gap`: u, log L̂ and the Jacobian of
    log L̂ for many fit vectors at once. Fitting and prediction follow from it."""

    @abstractmethod
    def _log_gap(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """log of the term added to L0 (clipped), log L̂, and the Jacobian of log L̂."""

    @abstractmethod
    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        """Parameters → fit vector; shared constants only, so `data` is not needed."""

    def log_model(
        self, theta: FloatArray, data: Dataset, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        _, log_pred, jac = self._log_gap(theta, data.x, grad=grad)
        return log_pred, jac

    def predict(self, params: Params, x: Features) -> FloatArray:
        return np.asarray(self.predict_many(self.to_vector(params)[None, :], x)[0])

    def params_matrix(self, params_list: Sequence[Params]) -> FloatArray:
        return _stack([self.to_vector(p) for p in params_list], len(self._fit_names))

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        check_features(x)
        u, _, _ = self._log_gap(_check_thetas(thetas, len(self._fit_names)), x, grad=False)
        return np.asarray(x.l0 + np.exp(u), dtype=np.float64)


class P2Form(_GapOverL0Form):
    """P² (the paper's L1): L = L0 + (1/ρ)^γ · (1/N0)^δ · (N_C / N0^α + D_C / D^β + E).

    N0 and D in billions (n0/1e9, tokens/1e9); fitted with log N_C, log D_C, log E, the gap term
    as a log-sum-exp. Floor (D → ∞): L0 + ρ^(−γ) N0^(−δ) (N_C N0^(−α) + E).
    """

    name = "p2"
    param_names = ("N_C", "D_C", "E", "alpha", "beta", "gamma", "delta")
    description = "L = L0 + (1/rho)^gamma * (1/N0)^delta * (N_C/N0^alpha + D_C/D^beta + E)"
    _fit_names = ("log_N_C", "log_D_C", "log_E", "alpha", "beta", "gamma", "delta")
    _bounds = (
        LOG_CONSTANT_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        DECAY_BOUNDS,
        DECAY_BOUNDS,
        SIGNED_BOUNDS,
        SIGNED_BOUNDS,
    )

    def start_grid(self, data: Dataset) -> FloatArray:
        # 3·4·3·3·4·4·3 = 5,184 starts spanning the regimes seen from 1M-parameter models to 70B.
        axes = (
            (-6.0, -2.0, 1.0),
            (-8.0, -5.5, -3.0, -0.5),
            (-8.0, -3.0, -0.5),
            (0.1, 0.5, 1.0),
            (0.15, 0.35, 0.6, 1.0),
            (-2.0, -1.0, -0.3, 0.5),
            (-0.5, 0.0, 0.5),
        )
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        return np.array(
            [
                _log_param(params, "N_C"),
                _log_param(params, "D_C"),
                _log_param(params, "E"),
                _p(params, "alpha"),
                _p(params, "beta"),
                _p(params, "gamma"),
                _p(params, "delta"),
            ]
        )

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        t = np.asarray(theta, dtype=np.float64)
        return {
            "N_C": float(np.exp(t[0])),
            "D_C": float(np.exp(t[1])),
            "E": float(np.exp(t[2])),
            "alpha": float(t[3]),
            "beta": float(t[4]),
            "gamma": float(t[5]),
            "delta": float(t[6]),
        }

    def _log_gap(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """log of the term added to L0 (clipped), log L̂, and the Jacobian of log L̂."""
        u, log_pred, jac, _ = _p2_log_gap(theta, x, np.log(x.tokens / 1e9), delta=True, grad=grad)
        return u, log_pred, jac

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        # The shared path through `_log_gap` is exact, but a request's points usually allow
        # the faster linear-space sum below.
        check_features(x)
        theta = _check_thetas(thetas, len(self._fit_names))
        ln_n = np.log(x.n0 / 1e9)
        ln_d = np.log(x.tokens / 1e9)
        ln_rho = np.log(x.rho)
        # Bounds on the exponents log N_C − α ln N, log D_C − β ln D, log E and log K from the
        # largest magnitudes alone (a −inf constant fails them).
        top = np.abs(theta).max(axis=0) if theta.shape[0] else np.full(7, np.inf)
        m_n, m_d, m_rho = _largest(ln_n), _largest(ln_d), _largest(ln_rho)
        with np.errstate(invalid="ignore"):  # inf · 0 is NaN, which fails the test too
            bounds = np.array(
                [
                    top[0] + top[3] * m_n,
                    top[1] + top[4] * m_d,
                    top[2],
                    top[5] * m_rho + top[6] * m_n,
                ]
            )
        if np.all(bounds <= LINEAR_BOUND):
            # Then the three terms' sum times K is exact to a few ulps in linear space, at
            # half the cost of the log-sum-exp.
            if (x.n0 == x.n0[0]).all() and (x.rho == x.rho[0]).all():
                # One model at many token counts (a loss curve, the usual request): the N0 and
                # ρ terms are one value per parameter set.
                ln_n, ln_rho = ln_n[:1], ln_rho[:1]
            gap = np.exp(_col(theta, 1) - _col(theta, 4) * ln_d)
            gap += np.exp(_col(theta, 0) - _col(theta, 3) * ln_n)
            gap += np.exp(_col(theta, 2))
            gap *= np.exp(-_col(theta, 5) * ln_rho - _col(theta, 6) * ln_n)
            gap += x.l0
            return np.asarray(gap, dtype=np.float64)
        # The log of the term added to L0, as `_log_gap` computes it, without the weights and
        # log L̂ that only fitting needs.
        log_g = logsumexp_value(
            [
                _col(theta, 0) - _col(theta, 3) * ln_n,
                _col(theta, 1) - _col(theta, 4) * ln_d,
                _col(theta, 2),
            ]
        )
        log_k = -_col(theta, 5) * ln_rho - _col(theta, 6) * ln_n
        u = np.minimum(log_k + log_g, _LOG_MAX)
        return np.asarray(x.l0 + np.exp(u), dtype=np.float64)

    def floor(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        n = x.n0 / 1e9
        with np.errstate(over="ignore"):
            log_k = -_p(params, "gamma") * np.log(x.rho) - _p(params, "delta") * np.log(n)
            rest = _p(params, "N_C") * np.exp(
                np.minimum(-_p(params, "alpha") * np.log(n), _LOG_MAX)
            ) + _p(params, "E")
            gap = np.exp(np.minimum(log_k, _LOG_MAX)) * rest
        return np.asarray(x.l0 + np.minimum(gap, np.finfo(np.float64).max / 4), dtype=np.float64)

    def closed_form_tokens(
        self, params: Params, x: Features, rule: Rule, value: float
    ) -> FloatArray | None:
        n = x.n0 / 1e9
        beta = _p(params, "beta")
        if not beta > 0:  # the D term does not fall with D: no closed form, the numeric path says
            return None
        k_dc = x.rho ** (-_p(params, "gamma")) * n ** (-_p(params, "delta")) * _p(params, "D_C")
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            if rule == "marginal":
                d_star = (beta * k_dc / value) ** (1.0 / (beta + 1.0))
            elif rule == "gap":
                d_star = (k_dc / value) ** (1.0 / beta)
            else:
                gap = value - self.floor(params, x)
                d_star = (k_dc / gap) ** (1.0 / beta)
        return np.asarray(d_star * 1e9, dtype=np.float64)


class FrantarForm(Form):
    """Frantar et al. (ICLR 2024) sparsity law adapted to recovery, no L0 term.

    L = (a·(1−ρ)^b + c) · N0^(−d) + e · D^(−f) + g, N0 and D in billions; a, c, e, g ≥ 0 fitted
    as logs. Floor (D → ∞): (a(1−ρ)^b + c) N0^(−d) + g.
    """

    name = "frantar"
    # Without an L0 term its constants drift along flat valleys on real data: each polish is
    # long, and two starts find the same basins as four.
    n_polish = 2
    param_names = ("a", "b", "c", "d", "e", "f", "g")
    description = "L = (a*(1-rho)^b + c) * N0^(-d) + e * D^(-f) + g"
    _fit_names = ("log_a", "b", "log_c", "d", "log_e", "f", "log_g")
    _bounds = (
        LOG_CONSTANT_BOUNDS,
        SIGNED_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        SIGNED_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        DECAY_BOUNDS,
        LOG_CONSTANT_BOUNDS,
    )

    def start_grid(self, data: Dataset) -> FloatArray:
        axes = (
            (-3.0, -0.5),
            (-2.0, -0.5, 1.0),
            (-4.0, -1.0),
            (-0.2, 0.0, 0.2),
            (-6.0, -3.0, -0.5),
            (0.2, 0.5, 1.0),
            (0.0, 0.7, 1.2),
        )
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        return np.array(
            [
                _log_param(params, "a"),
                _p(params, "b"),
                _log_param(params, "c"),
                _p(params, "d"),
                _log_param(params, "e"),
                _p(params, "f"),
                _log_param(params, "g"),
            ]
        )

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        t = np.asarray(theta, dtype=np.float64)
        return {
            "a": float(np.exp(t[0])),
            "b": float(t[1]),
            "c": float(np.exp(t[2])),
            "d": float(t[3]),
            "e": float(np.exp(t[4])),
            "f": float(t[5]),
            "g": float(np.exp(t[6])),
        }

    def _log_pred(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        ln_n = np.log(x.n0 / 1e9)
        ln_d = np.log(x.tokens / 1e9)
        ln_keep = np.log1p(-x.rho)
        t1 = _col(theta, 0) + _col(theta, 1) * ln_keep - _col(theta, 3) * ln_n
        t2 = _col(theta, 2) - _col(theta, 3) * ln_n
        t3 = _col(theta, 4) - _col(theta, 5) * ln_d
        t4 = np.broadcast_to(_col(theta, 6), t1.shape)
        lse, (w1, w2, w3, w4) = logsumexp_terms([t1, t2, t3, t4])
        lse = np.minimum(lse, _LOG_MAX)
        if not grad:
            return lse, None
        jac = np.stack(
            [w1, w1 * ln_keep, w2, -(w1 + w2) * ln_n, w3, -w3 * ln_d, w4],
            axis=-1,
        )
        return lse, jac

    def log_model(
        self, theta: FloatArray, data: Dataset, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        return self._log_pred(theta, data.x, grad=grad)

    def predict(self, params: Params, x: Features) -> FloatArray:
        return np.asarray(self.predict_many(self.to_vector(params)[None, :], x)[0])

    def params_matrix(self, params_list: Sequence[Params]) -> FloatArray:
        return _stack([self.to_vector(p) for p in params_list], len(self._fit_names))

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        check_features(x)
        theta = _check_thetas(thetas, len(self._fit_names))
        # `_log_pred` without the weights that only fitting needs.
        ln_n = np.log(x.n0 / 1e9)
        log_pred = logsumexp_value(
            [
                _col(theta, 0) + _col(theta, 1) * np.log1p(-x.rho) - _col(theta, 3) * ln_n,
                _col(theta, 2) - _col(theta, 3) * ln_n,
                _col(theta, 4) - _col(theta, 5) * np.log(x.tokens / 1e9),
                _col(theta, 6),
            ]
        )
        return np.asarray(np.exp(np.minimum(log_pred, _LOG_MAX)), dtype=np.float64)

    def floor(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        n = x.n0 / 1e9
        with np.errstate(over="ignore"):
            value = (_p(params, "a") * (1 - x.rho) ** _p(params, "b") + _p(params, "c")) * (
                n ** (-_p(params, "d"))
            ) + _p(params, "g")
        return np.asarray(np.minimum(value, np.exp(_LOG_MAX)), dtype=np.float64)


class CompressionForm(Form):
    """Sengupta et al. (2025): L = L0^a · (1+ρ)^b · (1 + 1/(D+1))^c, D in millions of tokens.

    log L is linear in (a, b, c), so the fit is convex in the quadratic Huber region.
    Floor (D → ∞): L0^a (1+ρ)^b.
    """

    name = "compression"
    param_names = ("a", "b", "c")
    description = "L = L0^a * (1+rho)^b * (1 + 1/(D+1))^c, D in millions of tokens"
    _fit_names = ("a", "b", "c")
    _bounds = ((0.0, 3.0), (-10.0, 10.0), (-10.0, 10.0))

    def start_grid(self, data: Dataset) -> FloatArray:
        axes = ((0.5, 1.0, 1.5), (-1.0, 0.0, 1.0, 2.0), (0.0, 0.5, 1.0, 2.0, 4.0))
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        return np.array([_p(params, "a"), _p(params, "b"), _p(params, "c")])

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        t = np.asarray(theta, dtype=np.float64)
        return {"a": float(t[0]), "b": float(t[1]), "c": float(t[2])}

    @staticmethod
    def _design(x: Features) -> FloatArray:
        d_millions = x.tokens / 1e6
        return np.stack(
            [np.log(x.l0), np.log1p(x.rho), np.log1p(1.0 / (d_millions + 1.0))], axis=-1
        )

    def log_model(
        self, theta: FloatArray, data: Dataset, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        design = self._design(data.x)
        log_pred = np.minimum(theta @ design.T, _LOG_MAX)
        if not grad:
            return log_pred, None
        return log_pred, np.broadcast_to(design, (theta.shape[0], *design.shape))

    def predict(self, params: Params, x: Features) -> FloatArray:
        return np.asarray(self.predict_many(self.to_vector(params)[None, :], x)[0])

    def params_matrix(self, params_list: Sequence[Params]) -> FloatArray:
        return _stack([self.to_vector(p) for p in params_list], len(self._fit_names))

    def predict_many(self, thetas: FloatArray, x: Features) -> FloatArray:
        check_features(x)
        matrix = _check_thetas(thetas, len(self._fit_names))
        log_pred = np.minimum(matrix @ self._design(x).T, _LOG_MAX)
        return np.asarray(np.exp(log_pred), dtype=np.float64)

    def floor(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        log_floor = _p(params, "a") * np.log(x.l0) + _p(params, "b") * np.log1p(x.rho)
        return np.asarray(np.exp(np.minimum(log_floor, _LOG_MAX)), dtype=np.float64)


class CurveForm(Form):
    """One power law per run: L = E + B · D^(−β), D in billions of tokens.

    It cannot generalise across runs; it is the baseline for extrapolation in D only. Its
    parameters are per run, keyed ``E@<run_id>``, ``B@<run_id>``, ``beta@<run_id>``, together with
    the run's ``n0@``, ``rho@`` and ``l0@`` so that a prediction point (n0, ρ, L0) finds its run.
    Floor (D → ∞): E of the run.
    """

    name = "curve"
    # Three parameters per run and a dense per-run grid: the grid's best triple is the basin.
    n_polish = 1
    param_names = ("E", "B", "beta")
    description = "L = E + B * D^(-beta), one (E, B, beta) per run"
    _per_run_bounds = (LOG_CONSTANT_BOUNDS, LOG_CONSTANT_BOUNDS, DECAY_BOUNDS)
    _match_rtol = 1e-6

    @staticmethod
    def _runs(data: Dataset) -> tuple[IntArray, IntArray]:
        """Runs with data (sorted indices) and each point's position among them."""
        present, position = np.unique(data.run, return_inverse=True)
        return present, position

    def blocks(self, data: Dataset) -> list[tuple[BoolArray, slice]] | None:
        _, position = self._runs(data)
        return [(position == j, slice(3 * j, 3 * j + 3)) for j in range(int(position.max()) + 1)]

    def fit_names(self, data: Dataset) -> tuple[str, ...]:
        present, _ = self._runs(data)
        names: list[str] = []
        for r in present:
            rid = data.run_ids[int(r)]
            names += [f"log_E@{rid}", f"log_B@{rid}", f"beta@{rid}"]
        return tuple(names)

    def bounds(self, data: Dataset) -> list[tuple[float, float]]:
        present, _ = self._runs(data)
        return list(self._per_run_bounds) * len(present)

    def _triples(self) -> FloatArray:
        axes = (
            tuple(np.linspace(-3.0, 2.5, 12)),
            tuple(np.linspace(-8.0, 2.0, 11)),
            (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5),
        )
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def start_grid(self, data: Dataset) -> FloatArray:
        present, _ = self._runs(data)
        return np.tile(self._triples(), (1, len(present)))

    def select_starts(self, data: Dataset, k: int) -> FloatArray:
        # Runs are independent, so each run takes its own best triple: R small grids instead of
        # one grid of size |grid|^R.
        present, position = self._runs(data)
        triples = self._triples()
        ln_d = np.log(data.x.tokens / 1e9)
        log_e, log_b, beta = (triples[:, j : j + 1] for j in range(3))
        log_pred, _ = logsumexp_terms(
            [np.broadcast_to(log_e, (len(triples), len(data))), log_b - beta * ln_d]
        )
        cost = huber(log_pred - np.log(data.loss))
        per_run = np.zeros((len(triples), len(present)))
        for j in range(len(present)):
            per_run[:, j] = cost[:, position == j].sum(axis=1)
        order = np.argsort(per_run, axis=0, kind="stable")
        starts = [triples[order[min(i, len(triples) - 1)], :].reshape(-1) for i in range(k)]
        return np.array(starts)

    def to_vector(self, params: Params, data: Dataset) -> FloatArray:
        present, _ = self._runs(data)
        values: list[float] = []
        for r in present:
            rid = data.run_ids[int(r)]
            try:
                values += [
                    _log_param(params, f"E@{rid}"),
                    _log_param(params, f"B@{rid}"),
                    float(params[f"beta@{rid}"]),
                ]
            except KeyError as exc:
                raise LawError(f"curve parameters lack run {rid!r}") from exc
        return np.array(values)

    def from_vector(self, theta: FloatArray, data: Dataset) -> dict[str, float]:
        present, position = self._runs(data)
        t = np.asarray(theta, dtype=np.float64)
        out: dict[str, float] = {}
        for j, r in enumerate(present):
            rid = data.run_ids[int(r)]
            mine = position == j
            out[f"E@{rid}"] = float(np.exp(t[3 * j]))
            out[f"B@{rid}"] = float(np.exp(t[3 * j + 1]))
            out[f"beta@{rid}"] = float(t[3 * j + 2])
            out[f"n0@{rid}"] = float(np.median(data.x.n0[mine]))
            out[f"rho@{rid}"] = float(np.median(data.x.rho[mine]))
            out[f"l0@{rid}"] = float(np.median(data.x.l0[mine]))
        return out

    def log_model(
        self, theta: FloatArray, data: Dataset, *, grad: bool
    ) -> tuple[FloatArray, FloatArray | None]:
        _, position = self._runs(data)
        ln_d = np.log(data.x.tokens / 1e9)
        log_e = theta[:, 3 * position]
        log_b = theta[:, 3 * position + 1]
        beta = theta[:, 3 * position + 2]
        log_pred, (w1, w2) = logsumexp_terms([log_e, log_b - beta * ln_d])
        log_pred = np.minimum(log_pred, _LOG_MAX)
        if not grad:
            return log_pred, None
        n = len(data)
        jac = np.zeros((theta.shape[0], n, theta.shape[1]))
        rows = np.arange(n)
        jac[:, rows, 3 * position] = w1
        jac[:, rows, 3 * position + 1] = w2
        jac[:, rows, 3 * position + 2] = -w2 * ln_d
        return log_pred, jac

    _run_keys = ("E", "B", "beta", "n0", "rho", "l0")

    def check_params(self, params: Params) -> None:
        """LawError unless every run has all six ``key@run`` entries, all finite."""
        runs = self.run_ids_of(params)
        if not runs:
            raise LawError("curve parameters hold no run (keys like E@<run_id>)")
        expected = {f"{k}@{r}" for r in runs for k in self._run_keys}
        missing = sorted(expected - set(params))
        unknown = sorted(set(params) - expected)
        if missing or unknown:
            lacking = ", ".join(missing) or "none"
            extra = ", ".join(unknown) or "none"
            raise LawError(
                f"curve parameters must be {', '.join(self._run_keys)} per run as key@run_id "
                f"(missing: {lacking}; unknown: {extra})"
            )
        if not all(np.isfinite(float(v)) for v in params.values()):
            raise LawError("curve parameters must be finite")

    @staticmethod
    def run_ids_of(params: Params) -> list[str]:
        """Run ids that a set of curve parameters covers, in stored order."""
        return [key[2:] for key in params if key.startswith("E@")]

    def _per_point(self, params: Params, run_ids: list[str]) -> tuple[FloatArray, ...]:
        try:
            e = np.array([float(params[f"E@{r}"]) for r in run_ids])
            b = np.array([float(params[f"B@{r}"]) for r in run_ids])
            beta = np.array([float(params[f"beta@{r}"]) for r in run_ids])
        except KeyError as exc:
            raise LawError(f"curve parameters lack {exc.args[0]!r}") from exc
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(b)) and np.all(np.isfinite(beta))):
            raise LawError("curve parameters must be finite")
        if np.any(e < 0) or np.any(b < 0):
            raise LawError("curve parameters E and B must be ≥ 0")
        return e, b, beta

    def match_runs(self, params: Params, x: Features) -> list[str]:
        """The run each point belongs to, by (n0, ρ, L0); LawError for none or several."""
        runs = self.run_ids_of(params)
        if not runs:
            raise LawError("curve parameters hold no run")
        try:
            keys = np.array(
                [
                    [float(params[f"n0@{r}"]), float(params[f"rho@{r}"]), float(params[f"l0@{r}"])]
                    for r in runs
                ]
            )
        except KeyError as exc:
            raise LawError(f"curve parameters lack {exc.args[0]!r}") from exc
        points = np.stack([x.n0, x.rho, x.l0], axis=-1)
        close = np.all(
            np.isclose(points[:, None, :], keys[None, :, :], rtol=self._match_rtol, atol=0.0),
            axis=-1,
        )
        counts = close.sum(axis=1)
        if np.any(counts == 0):
            i = int(np.argmax(counts == 0))
            raise LawError(
                f"the curve form has one power law per run and no fitted run has "
                f"n0={x.n0[i]:.6g}, rho={x.rho[i]:.6g}, l0={x.l0[i]:.6g}; "
                f"fitted runs: {', '.join(runs)}"
            )
        if np.any(counts > 1):
            i = int(np.argmax(counts > 1))
            names = [runs[j] for j in np.flatnonzero(close[i])]
            raise LawError(
                f"n0={x.n0[i]:.6g}, rho={x.rho[i]:.6g}, l0={x.l0[i]:.6g} matches several runs "
                f"({', '.join(names)}); fit the curve form per method"
            )
        return [runs[int(j)] for j in np.argmax(close, axis=1)]

    def _predict_runs(self, params: Params, tokens: FloatArray, run_ids: list[str]) -> FloatArray:
        e, b, beta = self._per_point(params, run_ids)
        with np.errstate(divide="ignore", over="ignore"):
            # log(0) = −inf for a run whose B is exactly zero: its curve is flat at E.
            log_term = np.minimum(np.log(b) - beta * np.log(tokens / 1e9), _LOG_MAX)
        return np.asarray(e + np.exp(log_term), dtype=np.float64)

    def predict(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        return self._predict_runs(params, x.tokens, self.match_runs(params, x))

    def predict_data(self, params: Params, data: Dataset) -> FloatArray:
        check_features(data.x)
        runs = [data.run_ids[int(r)] for r in data.run]
        missing = sorted({r for r in runs if f"E@{r}" not in params})
        if missing:
            raise LawError(
                f"the curve form fits one power law per run and has none for run(s) "
                f"{', '.join(missing)}; it extrapolates in D only (use the D protocol)"
            )
        return self._predict_runs(params, data.x.tokens, runs)

    def floor(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        e, _, _ = self._per_point(params, self.match_runs(params, x))
        return np.asarray(e, dtype=np.float64)


class P2TppForm(_GapOverL0Form):
    """P² on tokens per parameter, shifted:
    L = L0 + (1/ρ)^γ · (N_C / N0^α + D_C / (D/N0 + T_s)^β + E).

    The token axis is D/N0, post-training tokens per parameter of the dense model (both raw
    counts, so unit-free), shifted by T_s ≥ 0 (in tokens per parameter) for the flat start of a
    run while the learning rate warms up. Size enters through tokens per parameter and N_C/N0^α
    (N0 in billions) with no N0^(−δ) factor, so the N0 dependence is measured along every curve
    rather than across a few sizes. Fitted with log N_C, log D_C, log E and log T_s.
    Floor (D → ∞): L0 + ρ^(−γ) (N_C N0^(−α) + E).
    """

    name = "p2-tpp"
    param_names = ("N_C", "D_C", "E", "alpha", "beta", "gamma", "T_s")
    description = (
        "L = L0 + (1/rho)^gamma * (N_C/N0^alpha + D_C/(D/N0 + T_s)^beta + E), "
        "D/N0 in tokens per parameter"
    )
    _fit_names = ("log_N_C", "log_D_C", "log_E", "alpha", "beta", "gamma", "log_T_s")
    _bounds = (
        LOG_CONSTANT_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        LOG_CONSTANT_BOUNDS,
        DECAY_BOUNDS,
        DECAY_BOUNDS,
        SIGNED_BOUNDS,
        LOG_CONSTANT_BOUNDS,
    )

    def start_grid(self, data: Dataset) -> FloatArray:
        # 3·4·3·3·4·4·3 = 5,184 starts, like p2. D_C multiplies a power of tokens per
        # parameter (about 0.01 to 100 in post-training), so its starts sit higher than p2's;
        # T_s starts at 0.02, 0.14 and 1 token per parameter.
        axes = (
            (-6.0, -2.0, 1.0),
            (-6.0, -4.0, -2.0, 0.0),
            (-8.0, -3.0, -0.5),
            (0.1, 0.5, 1.0),
            (0.15, 0.35, 0.6, 1.0),
            (-2.0, -1.0, -0.3, 0.5),
            (-4.0, -2.0, 0.0),
        )
        return np.array(list(itertools.product(*axes)), dtype=np.float64)

    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        return np.array(
            [
                _log_param(params, "N_C"),
                _log_param(params, "D_C"),
                _log_param(params, "E"),
                _p(params, "alpha"),
                _p(params, "beta"),
                _p(params, "gamma"),
                _log_param(params, "T_s"),
            ]
        )

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        t = np.asarray(theta, dtype=np.float64)
        return {
            "N_C": float(np.exp(t[0])),
            "D_C": float(np.exp(t[1])),
            "E": float(np.exp(t[2])),
            "alpha": float(t[3]),
            "beta": float(t[4]),
            "gamma": float(t[5]),
            "T_s": float(np.exp(t[6])),
        }

    def _log_gap(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """log of the term added to L0 (clipped), log L̂, and the Jacobian of log L̂."""
        # log(D/N0 + T_s), and its slope in log T_s (the share of T_s in the shifted axis).
        with np.errstate(divide="ignore"):
            ln_u, (_, w_s) = logsumexp_terms(
                [np.broadcast_to(np.log(x.tokens / x.n0), (theta.shape[0], len(x))), _col(theta, 6)]
            )
        return _with_axis_shift(_p2_log_gap(theta, x, ln_u, delta=False, grad=grad), theta, w_s)

    def floor(self, params: Params, x: Features) -> FloatArray:
        check_features(x)
        n = x.n0 / 1e9
        with np.errstate(over="ignore"):
            k = np.exp(np.minimum(-_p(params, "gamma") * np.log(x.rho), _LOG_MAX))
            rest = _p(params, "N_C") * np.exp(
                np.minimum(-_p(params, "alpha") * np.log(n), _LOG_MAX)
            ) + _p(params, "E")
            gap = k * rest
        return np.asarray(x.l0 + np.minimum(gap, np.finfo(np.float64).max / 4), dtype=np.float64)

    def closed_form_tokens(
        self, params: Params, x: Features, rule: Rule, value: float
    ) -> FloatArray | None:
        # With u = D/N0 + T_s: L − L∞ = K D_C u^(−β) and −dL/dD (per billion tokens) =
        # β K D_C u^(−β−1) · 1e9/N0; each rule gives u*, and D* = N0 (u* − T_s).
        beta = _p(params, "beta")
        t_s = _p(params, "T_s")
        if t_s < 0:
            raise LawError(f"parameter T_s must be ≥ 0, got {t_s!r}")
        if not beta > 0:  # as in P²: no closed form when the D term does not fall with D
            return None
        k_dc = x.rho ** (-_p(params, "gamma")) * _p(params, "D_C")
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            if rule == "marginal":
                u_star = (beta * k_dc * 1e9 / (x.n0 * value)) ** (1.0 / (beta + 1.0))
            elif rule == "gap":
                u_star = (k_dc / value) ** (1.0 / beta)
            else:
                u_star = (k_dc / (value - self.floor(params, x))) ** (1.0 / beta)
            d_star = x.n0 * (u_star - t_s)
        return np.asarray(d_star, dtype=np.float64)


class P2ShiftForm(_GapOverL0Form):
    """P² with a shifted token axis:
    L = L0 + (1/ρ)^γ · (1/N0)^δ · (N_C / N0^α + D_C / (D + D_s)^β + E).

    N0, D and D_s in billions; D_s ≥ 0 is the flat start of a run while the learning rate warms
    up, where a power law in D alone is steepest. Fitted like p2 with log D_s added. The floor
    (D → ∞) is p2's: L0 + ρ^(−γ) N0^(−δ) (N_C N0^(−α) + E).
    """

    name = "p2-shift"
    param_names = ("N_C", "D_C", "E", "alpha", "beta", "gamma", "delta", "D_s")
    description = "L = L0 + (1/rho)^gamma * (1/N0)^delta * (N_C/N0^alpha + D_C/(D+D_s)^beta + E)"
    _fit_names = ("log_N_C", "log_D_C", "log_E", "alpha", "beta", "gamma", "delta", "log_D_s")
    _bounds = (*P2Form._bounds, LOG_CONSTANT_BOUNDS)
    _p2 = P2Form()

    def start_grid(self, data: Dataset) -> FloatArray:
        # p2's 5,184 starts × D_s of 2.3e3, 1.2e5 and 6.7e6 tokens: 15,552 starts.
        base = self._p2.start_grid(data)
        shifts = np.array([-13.0, -9.0, -5.0])
        return np.column_stack(
            [np.repeat(base, shifts.size, axis=0), np.tile(shifts, base.shape[0])]
        )

    def to_vector(self, params: Params, data: Dataset | None = None) -> FloatArray:
        return np.append(self._p2.to_vector(params), _log_param(params, "D_s"))

    def from_vector(self, theta: FloatArray, data: Dataset | None = None) -> dict[str, float]:
        t = np.asarray(theta, dtype=np.float64)
        return {**self._p2.from_vector(t[:7]), "D_s": float(np.exp(t[7]))}

    def _log_gap(
        self, theta: FloatArray, x: Features, *, grad: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        # log(D + D_s), and its slope in log D_s (the share of D_s in the shifted axis).
        ln_u, (_, w_s) = logsumexp_terms(
            [np.broadcast_to(np.log(x.tokens / 1e9), (theta.shape[0], len(x))), _col(theta, 7)]
        )
        return _with_axis_shift(_p2_log_gap(theta, x, ln_u, delta=True, grad=grad), theta, w_s)

    def floor(self, params: Params, x: Features) -> FloatArray:
        return self._p2.floor(params, x)

    def closed_form_tokens(
        self, params: Params, x: Features, rule: Rule, value: float
    ) -> FloatArray | None:
        # p2's answers are for the shifted axis D + D_s; D* is that less D_s (billions).
        d_s = _p(params, "D_s")
        if d_s < 0:
            raise LawError(f"parameter D_s must be ≥ 0, got {d_s!r}")
        shifted = self._p2.closed_form_tokens(params, x, rule, value)
        if shifted is None:
            return None
        return np.asarray(shifted - d_s * 1e9, dtype=np.float64)


FORMS: dict[str, Form] = {}


def register(form: Form) -> Form:
    """Add a form to the registry (its name must be new); returns it."""
    if form.name in FORMS:
        raise LawError(f"form {form.name!r} is already registered")
    FORMS[form.name] = form
    return form


for _form in (
    P2Form(),
    FrantarForm(),
    CompressionForm(),
    CurveForm(),
    P2TppForm(),
    P2ShiftForm(),
):
    register(_form)

DEFAULT_FORM = "p2"


def get_form(name: str) -> Form:
    """The registered form called `name`; UnknownForm lists the known names otherwise."""
    try:
        return FORMS[name]
    except KeyError:
        known = ", ".join(sorted(FORMS))
        raise UnknownForm(f"unknown law form {name!r}; known forms: {known}") from None
