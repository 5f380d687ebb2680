"""What the driver hands to attribution workers, and the one function that plans it.

- :class:`JobConfig`: everything a worker needs to rebuild the job (source, checkpoint, output,
  methods as :class:`attribution.MethodSpec`), as plain data that travels to Ray actors and into
  ``run.json``, and comes back from it (:meth:`JobConfig.from_dict`).
- :class:`ShardTask`: one shard of the plan and the methods still to commit for it.
- :func:`block_rows` / :func:`block_tasks`: tasks as the few Ray Data rows the driver hands out (a
  plan segment and runs of shard indices), and back into tasks on a worker, from the plan.
- :func:`plan_shard_tasks`: the plan (stored under the output, extended by new samples), the zarr
  arrays sized for it, and a task for every shard that some method has not committed yet. The
  job, the tests and the benchmarks all plan through it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from attribution import MethodSpec
from storage.maps.writer import MapStore
from storage.maps.plan import RowRange, Shard, ShardPlan, listed_samples, plan_form, samples_in, update_plan
from storage.maps.plan_changes import SourceChanges, restamp, source_changes
from storage.sources import DEFAULT_MAX_IMAGE_PIXELS, RowFile, SampleRef, Source, SourcePolicy


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs, as plain data (it travels to Ray actors and into run.json)."""

    source: str
    checkpoint: str
    output: str
    methods: tuple[MethodSpec, ...]
    split: str = "test"
    batch_size: int = 64
    reduction: str = "signed_max_abs"
    target: str = "predicted"  # or "label"
    device: str = "auto"
    storage_options: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True  # CUDA: deterministic kernels, so a retried shard rewrites the same bytes
    # What the driver found, so that workers neither detect nor list the source again:
    source_format: str | None = None                  # the source's kind (storage.sources.FORMATS)
    source_classes: tuple[str, ...] | None = None     # the source's class list, which its labels index
    label_map: tuple[int, ...] | None = None          # source class index -> model class index (names matched)
    # The operator's limits and grants (docs/security.md):
    allow_paths: tuple[str, ...] = ()                 # --allow-paths: prefixes outside the source rows may name
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # --max-image-pixels: larger images are error rows
    trust_code: tuple[str, ...] = ()                  # --trust-code: modules a checkpoint's arch may import

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("allow_paths", "trust_code"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        for name in ("source_classes", "label_map"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.methods]

    @property
    def source_policy(self) -> SourcePolicy:
        return SourcePolicy(self.allow_paths, self.max_image_pixels)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "methods": [m.to_dict() for m in self.methods]}

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the storage options and with every URL redacted
        (storage.io.fs.redact_url): both may hold credentials, and this goes into run.json."""
        from storage.io.fs import redact_url

        public = {k: v for k, v in self.to_dict().items() if k != "storage_options"}
        for name in ("source", "checkpoint", "output"):
            public[name] = redact_url(public[name])
        public["allow_paths"] = [redact_url(p) for p in public.get("allow_paths") or ()]
        return public

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        """The config of :meth:`to_dict`, or of a ``run.json`` (which has no storage options)."""
        known = set(cls.__dataclass_fields__) - {"methods"}
        return cls(methods=stored_methods(data), **{k: v for k, v in data.items() if k in known})


def stored_methods(config: Mapping[str, Any]) -> tuple[MethodSpec, ...]:
    """The methods of a job config (:meth:`JobConfig.to_dict`, or a ``run.json``'s ``config``).

    Outputs written before methods were stored as specs hold ``methods`` as {label: params} and
    ``method_names`` as {label: name} where the two differed; those are read too.
    """
    methods = config.get("methods") or []
    if isinstance(methods, Mapping):
        names = config.get("method_names") or {}
        return tuple(MethodSpec(names.get(label, label), params, label) for label, params in methods.items())
    return tuple(MethodSpec.from_dict(m) for m in methods)


@dataclass(frozen=True)
class ShardTask:
    """One shard to process: its position in the plan, its samples (as refs, or as row ranges the
    worker expands through its source) and the methods still to commit."""

    index: int
    shard_id: str
    refs: Sequence[SampleRef]  # a tuple, or the plan's PlannedRefs (built into refs when read)
    methods: tuple[str, ...]
    ranges: tuple[RowRange, ...] = ()
    segment: str = field(default="", compare=False)  # the plan segment that holds the shard

    @property
    def samples(self) -> int:
        return samples_in(self.refs, self.ranges)

    @property
    def first_sample_id(self) -> str:
        """The shard's first sample id ("-" for an empty shard), to name the shard in messages."""
        if self.refs:
            return self.refs[0].sample_id
        return self.ranges[0].describe() if self.ranges else "-"

    def sample_refs(self, source: Source) -> list[SampleRef]:
        """The shard's refs; row ranges are expanded by ``source`` (a row-addressable one)."""
        return list(self.refs) + [ref for r in self.ranges for ref in source.row_refs(r)]


def block_rows(tasks: Sequence[ShardTask], blocks: int) -> list[dict[str, str]]:
    """``tasks`` (in plan order) cut into ``blocks`` even parts, as Ray Data rows: a plan segment and
    runs of consecutive shards with the same methods (``[[first, last, [methods]], ...]`` as JSON);
    a part that crosses segments gives a row per segment. The workers read the shards' samples from
    the plan (:func:`block_tasks`), so the driver hands Ray a few short rows per block, whatever the
    shards hold, instead of a row of JSON refs per shard."""
    rows: list[dict[str, str]] = []
    for b in range(blocks):
        part = tasks[b * len(tasks) // blocks:(b + 1) * len(tasks) // blocks]
        for segment, group in itertools.groupby(part, key=lambda t: t.segment):
            runs: list[list[Any]] = []
            for task in group:
                if runs and runs[-1][1] == task.index - 1 and runs[-1][2] == list(task.methods):
                    runs[-1][1] = task.index
                else:
                    runs.append([task.index, task.index, list(task.methods)])
            rows.append({"segment": segment, "runs": json.dumps(runs)})
    return rows


def block_tasks(row: Mapping[str, Any], segment_shards: Callable[[str], Mapping[int, Shard]]) -> list[ShardTask]:
    """The tasks of a :func:`block_rows` row; ``segment_shards(segment)`` gives the segment's shards by index."""
    segment = str(row["segment"])
    shards = segment_shards(segment)
    tasks = []
    for first, last, methods in json.loads(str(row["runs"])):
        for index in range(int(first), int(last) + 1):
            shard = shards[index]
            tasks.append(ShardTask(index, shard.shard_id, shard.refs, tuple(methods), shard.ranges, segment))
    return tasks


@dataclass(frozen=True)
class PlannedRun:
    """The plan of an output and the tasks a run has to do."""

    plan: ShardPlan
    new_shards: int
    tasks: tuple[ShardTask, ...]
    changes: SourceChanges = SourceChanges()
    recomputed: tuple[str, ...] = ()  # shards un-committed because their source files changed
    listed: int = 0  # samples in the source listing (all of it, or the --limit)
    committed: dict[str, dict[str, dict]] = field(default_factory=dict)  # method -> {shard_id: record}, as planned

    @property
    def pending_samples(self) -> int:
        return sum(task.samples for task in self.tasks)

    @property
    def committed_shards(self) -> int:
        """Shards every method has committed already."""
        return len(self.plan.shards) - len(self.tasks)


def source_listing(store: MapStore, source: Source, limit: int | None = None) -> Sequence[SampleRef] | list[RowFile]:
    """What to plan from: the source's row files where it is row-addressable (the plan then holds row
    ranges, not one ref per sample), else its refs; an output planned sample by sample stays so."""
    files = None if plan_form(store.where) == "samples" else source.row_files(limit)
    return files if files is not None else source.list(limit)


def plan_shard_tasks(store: MapStore, listing: Sequence[SampleRef] | Sequence[RowFile], shard_size: int,
                     methods: Sequence[str], map_shape: tuple[int, int], *, listing_complete: bool = True,
                     recompute_changed: bool = False, dry_run: bool = False) -> PlannedRun:
    """Extend the stored plan by what it lacks (``listing``: refs, or row files from
    :func:`source_listing`), return a task for each shard that some method has not committed, naming
    those methods, and size the zarr arrays of the methods with tasks for the plan.

    Samples whose file changed or vanished since they were planned are reported; with
    ``recompute_changed`` their shards are un-committed for ``methods`` (the plan takes the files'
    new stamps) and computed again, so a deleted file's sample becomes an error row instead of
    keeping the map of a file that is gone.

    ``dry_run`` writes and deletes nothing (no plan segment, no restamp, no un-commit, no zarr) and
    returns what a run would do: the same plan and tasks, from reads alone."""
    plan, new_shards = update_plan(store.where, listing, shard_size, write=not dry_run)
    changes = source_changes(plan, listing, listing_complete)
    recomputed: tuple[str, ...] = ()
    if changes and recompute_changed:
        recomputed = tuple(plan.shards[i].shard_id for i in changes.shards)
        if not dry_run:
            plan = restamp(store.where, plan, listing, listing_complete)
            for method in methods:
                for index in changes.shards:
                    store.uncommit(method, plan.shards[index].shard_id, index, plan.shards[index].size)
    with ThreadPoolExecutor(max_workers=max(1, len(methods))) as pool:  # one listing per method, at once
        done = dict(zip(methods, pool.map(store.committed, methods)))
    if dry_run and recomputed:  # what the un-commit would have taken out
        done = {m: {s: r for s, r in records.items() if s not in recomputed} for m, records in done.items()}
    tasks = []
    for shard in plan.shards:
        pending = tuple(m for m in methods if shard.shard_id not in done[m])
        if pending:
            tasks.append(ShardTask(shard.index, shard.shard_id, shard.refs, pending, shard.ranges, shard.segment))
    busy = {m for task in tasks for m in task.methods} if plan.shards else set(methods)
    for method in (m for m in methods if m in busy and not dry_run):  # the others' arrays hold every shard already
        store.ensure_zarr(method, plan.total_rows, map_shape, plan.shard_size)
    return PlannedRun(plan, new_shards, tuple(tasks), changes, recomputed, listed_samples(listing), done)
