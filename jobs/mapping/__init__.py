"""The parts of the attribution run (``python -m jobs.attribute``) that only it needs: method specs
(methods), binding an output to its configuration (binding), the Ray Data actor pool over pending
shards (actor_pool), the dry-run preview (preview) and what it says about committed maps
(map_checks).

Kept apart from jobs/evaluation and jobs/reporting so that the run's driver side lives in one
place (docs/design.md §3, §4). Imports jobs.runtime, workers, storage and attribution.
"""
