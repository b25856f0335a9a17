"""The measurement studies behind the law's defaults (docs/study.md): real pruning and
post-training runs of the project's own small models and of SmolLM2 through the job pipeline,
P² fits of the curves they give, and the studies of form choice, interval coverage and planning
that score the engine on those observations. Each module is a command run from the repository
root, e.g. ``.venv/bin/python -m studies.p2_small_models --out studies/results`` (``--help``
lists its options); results are committed under ``studies/results``. The package is not part of
the installed service.
"""
