"""Moved to ``workers.ml.tokens``; what ``workers.ml.pipeline`` still imports from here."""

from workers.ml.tokens.read import JobSplits, job_splits

__all__ = ["JobSplits", "job_splits"]
