"""What the driver hands to attribution workers: the job's config and the shards' read tasks.

- :class:`JobConfig`: everything a worker needs to rebuild the job (source, checkpoint, output,
  methods as :class:`attribution.MethodSpec`), as plain data that travels to Ray actors and into
  ``run.json``, and comes back from it (:meth:`JobConfig.from_dict`).
- :class:`ShardTask`: the read task of one shard: the planned shard and the methods still to commit.
- :func:`block_rows` / :func:`block_tasks`: tasks as the few Ray Data rows the driver hands out (a
  plan segment and runs of shard indices), and back into tasks on a worker, from the plan.

The driver plans the tasks (``jobs.mapping.planning.plan_run``); a worker reads a task's samples
through :class:`workers.shard_source.ShardSource`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from attribution import MethodSpec
from storage.maps.plan import Shard
from storage.sources import DEFAULT_MAX_IMAGE_PIXELS, SourcePolicy


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
    source_format: str | None = None                  # the source's kind (storage.sources.registry.REGISTRY)
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

    Every readable output (format 2 since its ``_`` layout, 9c39672) stores them as specs: the
    {label: params} form came before that layout and such outputs are refused as format 1
    (storage.maps.versions).
    """
    return tuple(MethodSpec.from_dict(m) for m in config.get("methods") or [])


@dataclass(frozen=True)
class ShardTask:
    """The read task of one shard: the planned :class:`Shard` (its samples, as refs or as row ranges
    the worker expands through its source) and the methods still to commit for it. It travels to the
    actors as a :func:`block_rows` row and comes back from the stored plan (:func:`block_tasks`)."""

    shard: Shard
    methods: tuple[str, ...]

    @property
    def index(self) -> int:
        return self.shard.index

    @property
    def shard_id(self) -> str:
        return self.shard.shard_id

    @property
    def segment(self) -> str:
        return self.shard.segment

    @property
    def samples(self) -> int:
        return self.shard.size

    @property
    def first_sample_id(self) -> str:
        """The shard's first sample id ("-" for an empty shard), to name the shard in messages."""
        if self.shard.refs:
            return self.shard.refs[0].sample_id
        return self.shard.ranges[0].describe() if self.shard.ranges else "-"


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
            tasks.append(ShardTask(shards[index], tuple(methods)))
    return tasks
