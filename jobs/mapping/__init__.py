"""The driver side of the attribution run (``python -m jobs.attribute``): method specs (methods; the
evaluation commands parse theirs here too), the run record and the output's binding (record),
planning the pending shards (planning), the Ray Data actor pool over them (actor_pool), the dry-run
preview (preview), the example PNG (examples) and what it says about committed maps (map_checks).

Kept apart from jobs/evaluation and jobs/reporting so that the run's driver side lives in one
place (docs/design.md §3, §4). Imports jobs.runtime, jobs.reporting, workers, storage, attribution and models.
"""
