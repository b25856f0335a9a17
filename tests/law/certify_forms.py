"""Writes form_vectors.json: certified values of the `p2-tpp` and `p2-shift` forms
(docs/law.md §2 and §7).

Independent of `app.law`: each formula is written out again here and evaluated with mpmath at
50 significant digits. Recommendations are found by bisection (200 halvings of log D) on each
rule's definition (the marginal slope by mpmath's numerical derivative), not by the closed forms
the engine uses, so the engine's closed forms are checked against the definitions. Run it from
the repository root:

    python tests/law/certify_forms.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mpmath as mp

mp.mp.dps = 50
BILLION = mp.mpf(10) ** 9

Law = dict[str, float]
#: (law, n0, rho, l0, tokens) -> loss; and (law, n0, rho, l0) -> floor.
LossFn = Callable[[Law, Any, Any, Any, Any], Any]
FloorFn = Callable[[Law, Any, Any, Any], Any]


def _mp(law: Law) -> dict[str, Any]:
    return {k: mp.mpf(v) for k, v in law.items()}


def tpp_loss(law: Law, n0: Any, rho: Any, l0: Any, tokens: Any) -> Any:
    """L = L0 + (1/ρ)^γ (N_C/N0^α + D_C/(D/N0 + T_s)^β + E), N0 in billions in the N_C term."""
    p = _mp(law)
    n0, rho, l0, tokens = (mp.mpf(v) for v in (n0, rho, l0, tokens))
    gap = p["N_C"] / (n0 / BILLION) ** p["alpha"] + p["E"]
    gap += p["D_C"] / (tokens / n0 + p["T_s"]) ** p["beta"]
    return l0 + (1 / rho) ** p["gamma"] * gap


def tpp_floor(law: Law, n0: Any, rho: Any, l0: Any) -> Any:
    p = _mp(law)
    gap = p["N_C"] / (mp.mpf(n0) / BILLION) ** p["alpha"] + p["E"]
    return mp.mpf(l0) + (1 / mp.mpf(rho)) ** p["gamma"] * gap


def shift_loss(law: Law, n0: Any, rho: Any, l0: Any, tokens: Any) -> Any:
    """L = L0 + (1/ρ)^γ (1/N0)^δ (N_C/N0^α + D_C/(D + D_s)^β + E), N0, D, D_s in billions."""
    p = _mp(law)
    n, d = mp.mpf(n0) / BILLION, mp.mpf(tokens) / BILLION
    gap = p["N_C"] / n ** p["alpha"] + p["D_C"] / (d + p["D_s"]) ** p["beta"] + p["E"]
    return mp.mpf(l0) + (1 / mp.mpf(rho)) ** p["gamma"] * (1 / n) ** p["delta"] * gap


def shift_floor(law: Law, n0: Any, rho: Any, l0: Any) -> Any:
    p = _mp(law)
    n = mp.mpf(n0) / BILLION
    gap = p["N_C"] / n ** p["alpha"] + p["E"]
    return mp.mpf(l0) + (1 / mp.mpf(rho)) ** p["gamma"] * (1 / n) ** p["delta"] * gap


FORMS: dict[str, tuple[Law, LossFn, FloorFn]] = {
    "p2-tpp": (
        {"N_C": 0.5, "D_C": 0.3, "E": 0.05, "alpha": 0.3, "beta": 0.4, "gamma": -0.8, "T_s": 0.05},
        tpp_loss,
        tpp_floor,
    ),
    "p2-shift": (
        {
            "N_C": 0.5,
            "D_C": 0.02,
            "E": 0.05,
            "alpha": 0.3,
            "beta": 0.5,
            "gamma": -0.8,
            "delta": 0.1,
            "D_s": 0.01,
        },
        shift_loss,
        shift_floor,
    ),
}
POINTS = [
    (1e9, 0.25, 2.5, 1e8),
    (8.03e9, 0.15, 2.1, 3e9),
    (5e8, 0.35, 3.0, 1e7),
    (75672.0, 0.25, 4.39, 2048.0),
    (1e9, 0.25, 2.5, 1.0),
]
# (rule, threshold or target offset above the floor) per form; the last is met from the start.
RULES = {
    "p2-tpp": [("marginal", 0.05), ("gap", 0.01), ("target", 0.05), ("gap", 0.5)],
    "p2-shift": [("marginal", 0.05), ("gap", 0.01), ("target", 0.05), ("gap", 0.3)],
}


def tokens_for(form: str, rule: str, value: float, point: tuple[float, float, float]) -> Any:
    """The smallest D (tokens, at least 1) at which the rule holds, by bisection on log D."""
    law, loss, floor = FORMS[form]
    n0, rho, l0 = point
    inf = floor(law, n0, rho, l0)

    def condition(log_d: Any) -> Any:
        d = mp.e**log_d
        if rule == "marginal":
            slope = mp.diff(lambda t: loss(law, n0, rho, l0, t), d)
            return -slope * BILLION - mp.mpf(value)
        return loss(law, n0, rho, l0, d) - inf - mp.mpf(value)

    if condition(mp.mpf(0)) <= 0:
        return mp.mpf(1)
    lo, hi = mp.mpf(0), mp.mpf(45)
    assert condition(hi) < 0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if condition(mid) <= 0 else (mid, hi)
    return mp.e ** ((lo + hi) / 2)


def certify(form: str) -> dict[str, Any]:
    law, loss, floor = FORMS[form]
    predict = [
        {
            "law": law,
            "n0": n0,
            "rho": rho,
            "l0": l0,
            "tokens": tokens,
            "loss": float(loss(law, n0, rho, l0, tokens)),
            "floor_loss": float(floor(law, n0, rho, l0)),
        }
        for n0, rho, l0, tokens in POINTS
    ]
    recommend = []
    point = (1e9, 0.25, 2.5)
    inf = floor(law, *point)
    for rule, value in RULES[form]:
        case: dict[str, Any] = {"law": law, "n0": 1e9, "rho": 0.25, "l0": 2.5, "rule": rule}
        if rule == "target":
            case["target_loss"] = float(inf + mp.mpf(value))
        else:
            case["threshold"] = value
        # L ≤ L_t is L − L∞ ≤ L_t − L∞: the target rule is the gap rule at that offset.
        d = tokens_for(form, "marginal" if rule == "marginal" else "gap", value, point)
        case["tokens"] = float(d)
        case["floor_loss"] = float(inf)
        case["predicted_loss"] = float(loss(law, *point, d))
        recommend.append(case)
    return {"predict": predict, "recommend": recommend}


def main() -> None:
    document: dict[str, Any] = {
        "about": (
            "Certified values of the p2-tpp and p2-shift forms (docs/law.md §2, §7), written by "
            "tests/law/certify_forms.py with mpmath at 50 digits, independently of app.law. n0 "
            "and tokens are raw counts. p2-tpp: D/N0 is tokens per parameter and the N_C term "
            "takes N0 in billions; p2-shift: N0, D and D_s in billions. Relative tolerance 1e-9 "
            "for predict, 1e-6 for recommend."
        ),
    }
    for form in FORMS:
        document[form] = certify(form)
    out = Path(__file__).with_name("form_vectors.json")
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
