"""Writes p2_tpp_vectors.json: certified values of the `p2-tpp` form (docs/law.md §2 and §7).

Independent of `app.law`: the formula is written out again here and evaluated with mpmath at 50
significant digits. Recommendations are found by bisection (200 halvings of log D) on each
rule's definition (the marginal slope by mpmath's numerical derivative), not by the closed forms
the engine uses, so the engine's closed forms are checked against the definitions. Run it from
the repository root:

    python tests/law/certify_p2_tpp.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mpmath as mp

mp.mp.dps = 50

LAW = {"N_C": 0.5, "D_C": 0.3, "E": 0.05, "alpha": 0.3, "beta": 0.4, "gamma": -0.8, "T_s": 0.05}
POINTS = [
    (1e9, 0.25, 2.5, 1e8),
    (8.03e9, 0.15, 2.1, 3e9),
    (5e8, 0.35, 3.0, 1e7),
    (75672.0, 0.25, 4.39, 2048.0),
    (1e9, 0.25, 2.5, 1.0),
]
# (rule, threshold or target offset above the floor); the last one is met from the first token.
RULES = [("marginal", 0.05), ("gap", 0.01), ("target", 0.05), ("gap", 0.5)]


def loss(law: dict[str, float], n0: Any, rho: Any, l0: Any, tokens: Any) -> Any:
    """L = L0 + (1/ρ)^γ (N_C/N0^α + D_C/(D/N0 + T_s)^β + E), N0 in billions in the N_C term."""
    p = {k: mp.mpf(v) for k, v in law.items()}
    n0, rho, l0, tokens = (mp.mpf(v) for v in (n0, rho, l0, tokens))
    n_b = n0 / mp.mpf(10) ** 9
    k = (1 / rho) ** p["gamma"]
    return l0 + k * (
        p["N_C"] / n_b ** p["alpha"] + p["D_C"] / (tokens / n0 + p["T_s"]) ** p["beta"] + p["E"]
    )


def floor(law: dict[str, float], n0: Any, rho: Any, l0: Any) -> Any:
    p = {k: mp.mpf(v) for k, v in law.items()}
    n_b = mp.mpf(n0) / mp.mpf(10) ** 9
    k = (1 / mp.mpf(rho)) ** p["gamma"]
    return mp.mpf(l0) + k * (p["N_C"] / n_b ** p["alpha"] + p["E"])


def tokens_for(rule: str, value: float, n0: float, rho: float, l0: float) -> Any:
    """The smallest D (tokens, at least 1) at which the rule holds, by root finding on log D."""
    inf = floor(LAW, n0, rho, l0)

    def condition(log_d: Any) -> Any:
        d = mp.e**log_d
        if rule == "marginal":
            slope = mp.diff(lambda t: loss(LAW, n0, rho, l0, t), d)
            return -slope * mp.mpf(10) ** 9 - mp.mpf(value)
        if rule == "gap":
            return loss(LAW, n0, rho, l0, d) - inf - mp.mpf(value)
        return loss(LAW, n0, rho, l0, d) - (inf + mp.mpf(value))

    if condition(mp.mpf(0)) <= 0:
        return mp.mpf(1)
    lo, hi = mp.mpf(0), mp.mpf(45)
    assert condition(hi) < 0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if condition(mid) <= 0 else (mid, hi)
    return mp.e ** ((lo + hi) / 2)


def main() -> None:
    predict = [
        {
            "law": LAW,
            "n0": n0,
            "rho": rho,
            "l0": l0,
            "tokens": tokens,
            "loss": float(loss(LAW, n0, rho, l0, tokens)),
            "floor_loss": float(floor(LAW, n0, rho, l0)),
        }
        for n0, rho, l0, tokens in POINTS
    ]
    recommend = []
    n0, rho, l0 = 1e9, 0.25, 2.5
    inf = floor(LAW, n0, rho, l0)
    for rule, value in RULES:
        case: dict[str, Any] = {"law": LAW, "n0": n0, "rho": rho, "l0": l0, "rule": rule}
        if rule == "target":
            case["target_loss"] = float(inf + mp.mpf(value))
        else:
            case["threshold"] = value
        d = tokens_for(rule, value, n0, rho, l0)
        case["tokens"] = float(d)
        case["floor_loss"] = float(inf)
        case["predicted_loss"] = float(loss(LAW, n0, rho, l0, d))
        recommend.append(case)
    document = {
        "about": (
            "Certified values of the p2-tpp form (docs/law.md §2, §7), written by "
            "tests/law/certify_p2_tpp.py with mpmath at 50 digits, independently of app.law. "
            "n0 and tokens are raw counts; D/N0 is tokens per parameter and the N_C term takes "
            "N0 in billions. Relative tolerance 1e-9 for predict, 1e-6 for recommend."
        ),
        "predict": predict,
        "recommend": recommend,
    }
    out = Path(__file__).with_name("p2_tpp_vectors.json")
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
