"""Reference laws shipped with the service: the project's measured observations
(``observations.csv``) and the default fit of each (family, method) made from them
(``fits.json``). `app.services.reference` loads them into an empty database and rebuilds
``fits.json``; docs/law.md §8 says what they are."""

from __future__ import annotations

from pathlib import Path

#: The folder holding the shipped files (installed with the package).
REFERENCE_DIR = Path(__file__).resolve().parent
OBSERVATIONS_CSV = REFERENCE_DIR / "observations.csv"
FITS_JSON = REFERENCE_DIR / "fits.json"
