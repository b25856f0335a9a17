"""Forms: certified predictions, analytic gradients, safe arithmetic, the registry."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.law.errors import LawError, UnknownForm
from app.law.fitting import objective_function
from app.law.forms import FORMS, get_form
from app.law.types import Dataset, Features


def _x(n0: float, rho: float, l0: float, tokens: float) -> Features:
    return Features(np.array([n0]), np.array([rho]), np.array([l0]), np.array([tokens]))


def test_p2_reproduces_every_certified_prediction(vectors: dict[str, Any]) -> None:
    law = get_form("p2")
    for case in vectors["predict"]:
        x = _x(case["n0"], case["rho"], case["l0"], case["tokens"])
        got = float(law.predict(case["law"], x)[0])
        assert got == pytest.approx(case["loss"], rel=1e-9)


def test_p2_predict_is_vectorised_over_points(vectors: dict[str, Any]) -> None:
    cases = [c for c in vectors["predict"] if c["law"] == vectors["predict"][0]["law"]]
    x = Features(
        np.array([c["n0"] for c in cases]),
        np.array([c["rho"] for c in cases]),
        np.array([c["l0"] for c in cases]),
        np.array([c["tokens"] for c in cases]),
    )
    got = get_form("p2").predict(cases[0]["law"], x)
    np.testing.assert_allclose(got, [c["loss"] for c in cases], rtol=1e-9)


def test_p2_floor_is_the_large_token_limit(vectors: dict[str, Any]) -> None:
    law = get_form("p2")
    params = vectors["predict"][0]["law"]
    far = law.predict(params, _x(1e9, 0.25, 2.5, 1e30))
    floor = law.floor(params, _x(1e9, 0.25, 2.5, 1.0))
    assert far[0] == pytest.approx(floor[0], rel=1e-9)


@pytest.mark.parametrize("tokens", [1.0, 1e-3, 1e30])
@pytest.mark.parametrize("form", ["p2", "frantar", "compression"])
def test_predictions_stay_finite_at_extreme_inputs(form: str, tokens: float) -> None:
    params = {
        "p2": {"N_C": 1e3, "D_C": 1e3, "E": 0.0, "alpha": 3, "beta": 3, "gamma": -3, "delta": 3},
        "frantar": {"a": 1e3, "b": -3, "c": 1.0, "d": 3, "e": 1e3, "f": 3, "g": 0.0},
        "compression": {"a": 3, "b": 10, "c": 10},
    }[form]
    x = Features(
        np.array([1e3, 1e12]),
        np.array([1e-6, 0.999]),
        np.array([0.01, 20.0]),
        np.array([tokens, tokens]),
    )
    out = get_form(form).predict(params, x)
    assert np.all(np.isfinite(out))


def test_p2_zero_constants_are_allowed_in_given_params() -> None:
    params = {"N_C": 0.0, "D_C": 0.0, "E": 0.0, "alpha": 0.3, "beta": 0.5, "gamma": -1, "delta": 0}
    out = get_form("p2").predict(params, _x(1e9, 0.25, 2.5, 1e8))
    assert out[0] == 2.5


def test_missing_or_negative_parameter_is_a_law_error() -> None:
    with pytest.raises(LawError, match="E"):
        get_form("p2").predict({"N_C": 1, "D_C": 1}, _x(1e9, 0.25, 2.5, 1e8))
    with pytest.raises(LawError, match="N_C"):
        get_form("p2").predict(
            {"N_C": -1, "D_C": 1, "E": 0, "alpha": 0, "beta": 0, "gamma": 0, "delta": 0},
            _x(1e9, 0.25, 2.5, 1e8),
        )


def test_invalid_features_are_rejected() -> None:
    params = {
        "N_C": 0.5,
        "D_C": 0.02,
        "E": 0.05,
        "alpha": 0.3,
        "beta": 0.5,
        "gamma": -0.8,
        "delta": 0.1,
    }
    with pytest.raises(LawError, match="rho"):
        get_form("p2").predict(params, _x(1e9, 1.5, 2.5, 1e8))
    with pytest.raises(LawError, match="tokens"):
        get_form("p2").predict(params, _x(1e9, 0.5, 2.5, 0.0))


def test_unknown_form_lists_the_known_ones() -> None:
    with pytest.raises(UnknownForm, match="p2"):
        get_form("chinchilla")


def _random_data(n_runs: int = 4, per_run: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n = n_runs * per_run
    run = np.repeat(np.arange(n_runs), per_run)
    x = Features(
        np.repeat(rng.uniform(1e8, 1e10, n_runs), per_run),
        np.repeat(rng.uniform(0.1, 0.5, n_runs), per_run),
        np.repeat(rng.uniform(2.0, 3.5, n_runs), per_run),
        np.tile(np.geomspace(1e7, 5e9, per_run), n_runs),
    )
    loss = x.l0 * rng.uniform(1.02, 1.3, n)
    return Dataset(x, loss, run.astype(np.int64), tuple(f"r{i}" for i in range(n_runs)))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_analytic_gradient_matches_finite_differences(form: str) -> None:
    data = _random_data()
    law = get_form(form)
    fun = objective_function(law, data)
    rng = np.random.default_rng(1)
    grid = law.start_grid(data)
    for start in grid[rng.choice(grid.shape[0], size=3, replace=False)]:
        theta = start + rng.normal(0, 0.05, start.shape)
        _, grad = fun(theta)
        h = 1e-6
        numeric = np.array(
            [(fun(theta + h * e)[0] - fun(theta - h * e)[0]) / (2 * h) for e in np.eye(theta.size)]
        )
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)


def test_curve_predicts_each_run_from_its_own_parameters() -> None:
    law = get_form("curve")
    params = {
        "E@a": 2.0,
        "B@a": 0.1,
        "beta@a": 0.5,
        "n0@a": 1e9,
        "rho@a": 0.25,
        "l0@a": 1.9,
        "E@b": 3.0,
        "B@b": 0.2,
        "beta@b": 0.3,
        "n0@b": 5e8,
        "rho@b": 0.25,
        "l0@b": 2.8,
    }
    x = Features(
        np.array([1e9, 5e8]), np.array([0.25, 0.25]), np.array([1.9, 2.8]), np.array([1e9, 1e9])
    )
    np.testing.assert_allclose(law.predict(params, x), [2.1, 3.2])
    np.testing.assert_allclose(law.floor(params, x), [2.0, 3.0])
    with pytest.raises(LawError, match="no fitted run"):
        law.predict(params, _x(2e9, 0.25, 1.9, 1e9))


def test_curve_refuses_a_point_that_matches_two_runs() -> None:
    params = {
        f"{k}@{r}": v
        for r in ("a", "b")
        for k, v in {"E": 2.0, "B": 0.1, "beta": 0.5, "n0": 1e9, "rho": 0.25, "l0": 1.9}.items()
    }
    with pytest.raises(LawError, match="several runs"):
        get_form("curve").predict(params, _x(1e9, 0.25, 1.9, 1e9))


def test_registering_a_form_makes_it_fittable_without_other_changes() -> None:
    from app.law.fitting import fit
    from app.law.forms import CompressionForm, register

    class Flat(CompressionForm):
        """L = L0^a · (1+ρ)^b · (1 + 1/(D+1))^c under another name (a registry check)."""

        name = "flat-test"

    register(Flat())
    try:
        result = fit("flat-test", _random_data())
        assert result.form == "flat-test"
        assert set(result.params) == {"a", "b", "c"}
    finally:
        del FORMS["flat-test"]


def test_check_params_names_missing_and_unknown_keys() -> None:
    law = get_form("p2")
    good = {"N_C": 0.5, "D_C": 0.02, "E": 0.0, "alpha": 0.3, "beta": 0.5, "gamma": -1, "delta": 0}
    law.check_params(good)
    with pytest.raises(LawError, match=r"missing E.*unknown X"):
        law.check_params({**{k: v for k, v in good.items() if k != "E"}, "X": 1.0})
    with pytest.raises(LawError, match="finite"):
        law.check_params({**good, "beta": float("nan")})
    curve = get_form("curve")
    run = {"E@a": 2.0, "B@a": 0.1, "beta@a": 0.5, "n0@a": 1e9, "rho@a": 0.25, "l0@a": 1.9}
    curve.check_params(run)
    with pytest.raises(LawError, match="l0@a"):
        curve.check_params({k: v for k, v in run.items() if k != "l0@a"})


@pytest.mark.parametrize("form", sorted(FORMS))
def test_many_parameter_sets_predict_as_one_set_at_a_time(form: str) -> None:
    law = get_form(form)
    data = _random_data(seed=3)
    rng = np.random.default_rng(4)
    grid = law.start_grid(data)
    thetas = grid[rng.choice(grid.shape[0], size=23)] + rng.normal(0, 0.1, (23, grid.shape[1]))
    lower, upper = np.array(law.bounds(data)).T
    params_list = [law.from_vector(np.clip(t, lower, upper), data) for t in thetas]
    # 37 points on the data's runs (the curve form predicts only those), tokens 1e6 to 1e12.
    pick = rng.integers(0, len(data), size=37)
    x = data.x.take(pick)
    x = Features(x.n0, x.rho, x.l0, 10 ** rng.uniform(6, 12, size=37))
    loop = np.stack([law.predict(p, x) for p in params_list])
    many = law.predict_sets(params_list, x)
    assert many.shape == (23, 37)
    np.testing.assert_allclose(many, loop, rtol=1e-12, atol=0)
    thetas_once = law.params_matrix(params_list)
    if thetas_once is not None:
        assert thetas_once.shape == (23, len(law.fit_names(data)))
        np.testing.assert_array_equal(law.predict_sets(params_list, x, thetas_once), many)
        # The prediction path agrees with the model that fitting uses.
        points = Dataset(x, np.ones(37), data.run[pick], data.run_ids)
        log_pred, _ = law.log_model(thetas_once, points, grad=False)
        np.testing.assert_allclose(many, np.exp(log_pred), rtol=1e-12, atol=0)


@pytest.mark.parametrize("form", ["p2", "frantar", "compression"])
def test_a_parameter_matrix_is_checked_once_and_must_have_the_forms_width(form: str) -> None:
    law = get_form(form)
    good = law.from_vector(law.start_grid(_random_data())[0], _random_data())
    matrix = law.params_matrix([good, good])
    assert matrix is not None and matrix.shape == (2, len(law.param_names))
    with pytest.raises(LawError, match="finite"):
        law.params_matrix([good, {**good, law.param_names[0]: float("nan")}])
    with pytest.raises(LawError, match="shape"):
        law.predict_many(matrix[:, :-1], _x(1e9, 0.25, 2.5, 1e8))


def test_p2_predicts_the_same_in_linear_and_in_log_space() -> None:
    """Within bounded exponents P² is evaluated in linear space; one row beyond them sends the
    whole batch through the log-sum-exp, and both give the same losses."""
    law = get_form("p2")
    rng = np.random.default_rng(11)
    grid = law.start_grid(_random_data())
    thetas = grid[rng.choice(grid.shape[0], size=40)] + rng.normal(0, 0.1, (40, 7))
    x = Features(
        10 ** rng.uniform(6, 11, 50),
        rng.uniform(0.05, 0.9, 50),
        rng.uniform(1.0, 4.0, 50),
        10 ** rng.uniform(3, 13, 50),
    )
    beyond = np.array([[400.0, -5.0, -3.0, 0.5, 0.5, -1.0, 0.0]])  # log N_C = 400
    curve = Features(np.full(50, 3e9), np.full(50, 0.3), x.l0, x.tokens)  # one model
    for points in (x, curve):
        linear = law.predict_many(thetas, points)
        logged = law.predict_many(np.vstack([thetas, beyond]), points)
        np.testing.assert_allclose(linear, logged[:40], rtol=1e-13, atol=0)
    assert np.all(np.isfinite(logged)) and np.all(logged[40] > x.l0)
    # E = 0 exactly (log E = −inf) goes through log space; E = e^−200 stays linear.
    zero_e, tiny_e = thetas.copy(), thetas.copy()
    zero_e[:, 2], tiny_e[:, 2] = -np.inf, -200.0
    np.testing.assert_allclose(
        law.predict_many(zero_e, x), law.predict_many(tiny_e, x), rtol=1e-13, atol=0
    )
