"""The driver side of the evaluation commands (jobs.perturb, jobs.sanity, jobs.roar,
jobs.roar_stats): what they read (inputs), the model as a Ray task gets it (payload), units stored as
each finishes (units), tables written atomically (outputs), perturbation's tables
(perturbation_tables), class-stratified subsets (subsets), ROAR's grid of retrain cells (roar_cells)
and what a grid means (roar_summary).

The math itself is pure torch in attribution/evaluation; here it meets Ray, sources and tables
(docs/design.md §2, §3). Imports jobs.runtime, jobs.reporting, workers, storage, attribution, models.
"""
