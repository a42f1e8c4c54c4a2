"""The batch side on Dask: discovery of sync breaks across two extracts, bulk scoring, distributed training.

Modules, one job each (dependencies point one way: cli -> these -> features / models / training):
options (defaults, light to import), errors, mapping (the mapping file), sources (files, folders,
PostgreSQL, split into pieces), canonical (a piece through the mapping), buckets (the shuffle),
join (pairs, features, model and counts per partition), models (the pair model a run uses),
hotspots, report, discover (the orchestration), extracts (the generator), trades and score
(score-batch), train (lightgbm.dask), cluster (local or remote Dask), cli.
"""
