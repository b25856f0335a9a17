"""Write examples/synthetic_observations.csv: SYNTHETIC observations from known P² constants.

Nothing here was measured. Losses are the P² law (docs/law.md §2, N0 and D in billions)
    L = L0 + (1/ρ)^γ · (1/N0)^δ · (N_C / N0^α + D_C / D^β + E)
times log-normal noise of 0.5% (seeded, so the file is reproducible), with the constants
    depth: N_C=0.5, D_C=0.06, E=0.05, alpha=0.3,  beta=0.5,  gamma=-0.8, delta=0.1
    width: N_C=0.3, D_C=0.04, E=0.04, alpha=0.25, beta=0.45, gamma=-0.9, delta=0.05
for a made-up family `synthetic-llama` of four dense sizes (N0, L0):
    0.5B 3.00 · 1B 2.75 · 3B 2.45 · 8B 2.20,
pruned at ρ ∈ {0.15, 0.25, 0.35} by `depth` and by `width`, each run with 15 log-spaced
checkpoints from 10M to 5B tokens: 2 × 4 × 3 × 15 = 360 rows, source=`synthetic`.

Run from the repository root: `python examples/make_synthetic.py`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.law.synthetic import make_rows  # noqa: E402

OUT = ROOT / "examples" / "synthetic_observations.csv"
COLUMNS = ("run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss", "protocol", "source")
# Every synthetic row shares one loss protocol, so a fit may use all of them together.
PROTOCOL = "synthetic-eval-v1"
SEED = 20250


def main() -> None:
    """Generate the rows and write the CSV (overwrites it)."""
    rows = make_rows(seed=SEED)
    with OUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r.run_id,
                    r.family,
                    r.method,
                    f"{r.n0:.0f}",
                    f"{r.rho:g}",
                    f"{r.l0:g}",
                    f"{r.tokens:.0f}",
                    f"{r.loss:.6f}",
                    PROTOCOL,
                    "synthetic",
                ]
            )
    print(f"wrote {len(rows)} synthetic observations to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
