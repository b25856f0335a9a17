"""All ORM models, imported here so ``Base.metadata`` knows every table (Alembic reads it).

A new table adds one import line below.
"""

from app.db.base import Base
from app.db.models.fit import Fit
from app.db.models.job import Job
from app.db.models.observation import Observation

__all__ = ["Base", "Fit", "Job", "Observation"]
