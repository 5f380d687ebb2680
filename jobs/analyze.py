"""Dataset-wide strategies (SpRAy, Lapuschkin et al. 2019): cluster each class's maps, on Ray.

    python -m jobs.analyze outputs/maps/fashion-mnist                       # the output's one method
    python -m jobs.analyze s3://bucket/maps/r50 --method pathway --by target --max-per-class 5000
    python -m jobs.analyze outputs/maps/fashion-mnist --in-process          # without Ray

What no single map shows: which strategies a model uses across a class, and which samples rely on a
shortcut (a watermark, a border, a background: a "Clever Hans"). Per class (``--by label`` or
``target``), the maps are downsampled to ``--size`` x ``--size`` by area means, taken as |.|
(``--absolute``, the default) or signed, and scaled per map (``--norm l2`` or ``max_abs``); a
symmetric k-nearest-neighbour graph (``--neighbors``) is clustered spectrally, with the count chosen
by the relative eigengap of its normalized Laplacian (up to ``--max-clusters``; ``--clusters`` fixes
it), and drawn in 2-D (``--layout tsne`` or the first two ``spectral`` coordinates). jobs/reporting/spray.py
holds the math.

Scale: a seeded sample of at most ``--max-per-class`` maps per class is embedded; every other map is
placed by its 10 nearest sampled maps (majority cluster, mean position), so a class of a million maps
costs one eigen-solve of the sample plus a neighbour search per map. Work on Ray (or, with
``--in-process``, the same tasks one at a time in this process: jobs.runtime.tasks): one task per
committed shard reads its maps (three columns) and returns the sampled maps' features, one task per
class clusters them, and one task per shard assigns its maps and sums them per cluster; the driver
holds ids and cluster numbers, never the maps.

Outputs, under ``<output>/_analysis/<method>/``: ``clusters/class-<c>.parquet`` (sample_id, class,
cluster, x, y, sampled), ``means/class-<c>.npy`` (the mean normalized map of each cluster,
[k, H, W] float32, at full size) and ``means/class-<c>.png`` (those maps with a colour bar),
``classes/class-<c>.json`` (k, cluster sizes, eigenvalues; written last, so it marks the class done),
``analysis.json`` (the settings and every class's summary) and ``config.json``.

Resumable and bound: a rerun skips each class whose record exists for the same number of maps (a class
that gained maps since is redone); a rerun with other settings into the same folder is refused with one
line (remove the folder, or use the same settings). Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.runtime.cli import (JobError, check_in_process, job_parser, positive_int, ray_flags, run_main,
                              storage_options_from)
from jobs.reporting.spray import LAYOUTS, NORMS

#: Version of the analysis layout, part of the bound configuration.
ANALYSIS_VERSION = 1
#: Sampled maps each out-of-sample map is placed by.
ASSIGN_NEIGHBORS = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m jobs.analyze", __doc__, [ray_flags()])
    p.add_argument("output", help="a map dataset written by jobs.attribute (folder URL)")
    p.add_argument("--method", default=None, help="method label to analyze (default: the output's only method)")
    p.add_argument("--by", choices=("label", "target"), default="label",
                   help="group maps by the true label or by the class the map explains")
    p.add_argument("--size", type=positive_int, default=16, help="maps are compared at SIZE x SIZE")
    p.add_argument("--norm", choices=NORMS, default="l2", help="per-map scaling before comparing")
    sign = p.add_mutually_exclusive_group()
    sign.add_argument("--absolute", dest="absolute", action="store_true", default=True,
                      help="compare |map| (relevance of either sign is use of a region); the default")
    sign.add_argument("--signed", dest="absolute", action="store_false", help="compare signed maps")
    p.add_argument("--neighbors", type=positive_int, default=10, help="k of the k-nearest-neighbour graph")
    p.add_argument("--max-clusters", type=positive_int, default=8, help="largest cluster count the eigengap picks")
    p.add_argument("--clusters", type=positive_int, default=None, help="a fixed cluster count (default: eigengap)")
    p.add_argument("--max-per-class", type=positive_int, default=2000,
                   help="maps per class in the embedding (a seeded sample; the rest are assigned)")
    p.add_argument("--layout", choices=LAYOUTS, default="tsne", help="2-D layout for drawing")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample, k-means and t-SNE")
    return p.parse_args(argv)


def settings(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """Everything that determines the clusters: the analysis folder is bound to it."""
    return {"version": ANALYSIS_VERSION, "method": method, "by": args.by, "size": args.size, "norm": args.norm,
            "absolute": args.absolute, "neighbors": args.neighbors, "max_clusters": args.max_clusters,
            "clusters": args.clusters, "max_per_class": args.max_per_class, "layout": args.layout,
            "seed": args.seed, "assign_neighbors": ASSIGN_NEIGHBORS}


def bind(where: Any, config: dict[str, Any]) -> None:
    """Record ``config`` in a new analysis folder; refuse one made with other settings."""
    from storage.io.fs import redact_url

    stored = where.get_optional("config.json")
    if stored is None:
        where.put_json("config.json", config)
        return
    before = json.loads(stored)
    diffs = [f"{k} was {before.get(k)!r}, is {config.get(k)!r}" for k in config if before.get(k) != config.get(k)]
    if diffs:
        raise JobError(f"{redact_url(where.url)} holds an analysis made with other settings ({'; '.join(diffs[:3])}); "
                       f"rerun with those settings to resume it, or remove that folder to start over")


def pick_method(store: Any, method: str | None, output: str) -> str:
    """The method to analyze: the one asked for, or the output's only one."""
    from storage.io.fs import redact_url

    methods = sorted({key.split("/")[0] for key in store.committed()})
    if not methods:
        raise JobError(f"{redact_url(output)} has no committed maps; run jobs.attribute into it first")
    if method is None:
        if len(methods) > 1:
            raise JobError(f"{redact_url(output)} holds maps of several methods ({', '.join(methods)}); pick one "
                           f"with --method")
        return methods[0]
    if method not in methods:
        raise JobError(f"--method {method}: {redact_url(output)} has no committed maps of it; it has "
                       f"{', '.join(methods)}")
    return method


def columns_of(store: Any, method: str) -> list[str]:
    """The column names of ``method``'s maps tables (from its first committed file's footer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = next(iter(store.committed(method).values()))
    rel = next(f["path"] for f in record["files"] if f["path"].startswith("maps/") and f["path"].endswith(".parquet"))
    data = store.where.get_optional(rel) or store.where.get(f"_pending/{rel}")
    try:
        return pq.read_schema(pa.BufferReader(data)).names
    except pa.ArrowInvalid as err:
        from storage.io.fs import StorageError

        raise StorageError(f"committed file {store.where.url_of(rel)} is not readable Parquet (truncated or "
                           f"corrupt?): {err}; delete its manifest record to recompute the shard") from None


# -- Ray tasks -----------------------------------------------------------------------------------
def _read(url: str, options: dict, method: str, shard_id: str, by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from storage.maps.reader import read_shard

    frame = read_shard(url, method, shard_id, options, columns=["sample_id", by, "map"])
    frame = frame[frame[by].notna()]
    maps = np.stack(list(frame["map"])) if len(frame) else np.zeros((0, 1, 1), np.float16)
    return frame["sample_id"].to_numpy(str), frame[by].to_numpy(np.int64), maps


def shard_features(url: str, options: dict, method: str, shard_id: str, config: dict, wanted: set[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard's sampled maps as features: (sample ids, classes, [n, size * size])."""
    from jobs.reporting.spray import features

    ids, classes, maps = _read(url, options, method, shard_id, config["by"])
    keep = np.fromiter((i in wanted for i in ids), bool, len(ids))
    return ids[keep], classes[keep], features(maps[keep], config["size"], config["norm"], config["absolute"])


def cluster_class(x: np.ndarray, config: dict) -> Any:
    """One class's sampled features, clustered (jobs.reporting.spray.cluster)."""
    from jobs.reporting.spray import cluster

    return cluster(x, neighbors=config["neighbors"], max_clusters=config["max_clusters"],
                   clusters=config["clusters"], layout=config["layout"], seed=config["seed"])


def shard_assign(url: str, options: dict, method: str, shard_id: str, config: dict, models: dict) -> dict:
    """One shard's maps of the classes in ``models`` placed in their class's clusters, and summed per
    cluster (normalized at full size, as compared) for the mean maps."""
    from jobs.reporting.spray import assign, features, normalize

    ids, classes, maps = _read(url, options, method, shard_id, config["by"])
    out = {"ids": [], "classes": [], "clusters": [], "xy": [], "sampled": [], "sums": {}, "counts": {}}
    for c in np.unique(classes):
        if int(c) not in models:
            continue
        model = models[int(c)]
        rows = np.flatnonzero(classes == c)
        position = {s: j for j, s in enumerate(model["ids"])}
        own = np.array([position.get(s, -1) for s in ids[rows]], np.int64)
        labels = np.where(own >= 0, model["labels"][np.maximum(own, 0)], 0)
        xy = model["layout"][np.maximum(own, 0)].copy()
        rest = np.flatnonzero(own < 0)
        if len(rest):
            x = features(maps[rows[rest]], config["size"], config["norm"], config["absolute"])
            labels[rest], xy[rest] = assign(model["x"], model["labels"], model["layout"], x, ASSIGN_NEIGHBORS)
        full = maps[rows].astype(np.float32)
        full = normalize(np.abs(full) if config["absolute"] else full, config["norm"])
        k = int(model["k"])
        sums = np.zeros((k, *full.shape[1:]), np.float64)
        np.add.at(sums, labels, full)
        out["sums"][int(c)], out["counts"][int(c)] = sums, np.bincount(labels, minlength=k)
        for key, value in (("ids", ids[rows]), ("classes", classes[rows]), ("clusters", labels), ("xy", xy),
                           ("sampled", own >= 0)):
            out[key].append(value)
    return out


def gather(tasks: Any, refs: Any) -> Any:
    """The tasks' results (jobs.runtime.tasks), with a task's storage or input error raised as itself
    (one line, exit 2, via jobs.runtime.cli.run_main), not as the wrapper that carries it from a worker."""
    from storage.io.fs import StorageError

    try:
        return tasks.get(refs)
    except tasks.errors as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, (StorageError, JobError)):
            raise cause from None
        raise


# -- driver --------------------------------------------------------------------------------------
def class_samples(meta: Any, by: str, pending: Sequence[int], limit: int, seed: int) -> dict[int, np.ndarray]:
    """Per pending class, the sample ids embedded: all when at most ``limit``, else a seeded sample
    (sorted, so the same settings draw the same maps however the shards were read)."""
    out = {}
    for c in pending:
        ids = np.sort(meta.loc[meta[by] == c, "sample_id"].to_numpy(str))
        if len(ids) > limit:
            ids = np.sort(np.random.default_rng([seed, int(c)]).choice(ids, limit, replace=False))
        out[int(c)] = ids
    return out


def mean_maps_png(means: np.ndarray, counts: np.ndarray, title: str) -> bytes:
    """The clusters' mean maps side by side, on one colour scale with a colour bar, in the project's
    convention (jobs/reporting/colors.py: signed maps symmetric around 0, |.| maps from 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jobs.reporting.colors import colormap, display_range, is_signed

    k = len(means)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k + 0.8, 2.6), squeeze=False)
    signed = is_signed(means)
    low, high = display_range(means, signed)
    image = None
    for j, ax in enumerate(axes[0]):
        image = ax.imshow(means[j], cmap=colormap(signed), vmin=low, vmax=high)
        ax.set_title(f"cluster {j} (n={int(counts[j])})", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_class(where: Any, c: int, parts: list[dict], result: Any, n_sampled: int, config: dict) -> dict:
    """One class's outputs; its record last, so a class with a record is complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pick = [p for p in parts if c in p["sums"]]
    cat = {key: np.concatenate([p[key][list(p["sums"]).index(c)] for p in pick]) for key in
           ("ids", "classes", "clusters", "xy", "sampled")}
    sums = sum(p["sums"][c] for p in pick)
    counts = sum(p["counts"][c] for p in pick)
    means = (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)
    order = np.argsort(cat["ids"], kind="stable")
    table = pa.table({"sample_id": cat["ids"][order], "class": cat["classes"][order],
                      "cluster": cat["clusters"][order], "x": cat["xy"][order, 0], "y": cat["xy"][order, 1],
                      "sampled": cat["sampled"][order]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    name = f"class-{c:04d}"
    where.put(f"clusters/{name}.parquet", sink.getvalue())
    npy = io.BytesIO()
    np.save(npy, means)
    where.put(f"means/{name}.npy", npy.getvalue())
    where.put(f"means/{name}.png", mean_maps_png(means, counts, f"{config['method']}, {config['by']} {c}: "
                                                                f"cluster mean maps"))
    record = {"class": c, "n": int(len(order)), "sampled": n_sampled, "k": result.k, "gap": round(result.gap, 4),
              "sizes": [int(v) for v in counts], "eigenvalues": [float(v) for v in result.eigenvalues]}
    where.put_json(f"classes/{name}.json", record)
    return record


def run(args: argparse.Namespace) -> int:
    from jobs.runtime.cluster import worker_options
    from jobs.runtime.tasks import tasks_for
    from storage.io.fs import join, redact_url
    from storage.io.location import Location
    from storage.maps.writer import MapStore
    from storage.maps.reader import read_maps_table
    from storage.maps.tables import ANALYSIS_DIR

    start = time.perf_counter()
    options = storage_options_from(args.storage_options)
    check_in_process(args)
    store = MapStore(args.output, options)
    method = pick_method(store, args.method, args.output)
    config = settings(args, method)
    where = Location(join(args.output, ANALYSIS_DIR, method), options)
    if args.by not in columns_of(store, method):
        raise JobError(f"--by {args.by}: the maps of {method!r} in {redact_url(args.output)} have no {args.by!r} "
                       f"column; try --by label")
    meta = read_maps_table(args.output, method, options, columns=["sample_id", "shard_id", args.by]).to_pandas()
    meta = meta[meta[args.by].notna()]
    meta[args.by] = meta[args.by].astype(np.int64)
    bind(where, config)
    counts = meta.groupby(args.by).size()
    done = {}
    for c, n in counts.items():
        record = where.get_optional(f"classes/class-{int(c):04d}.json")
        if record is not None and json.loads(record).get("n") == int(n):
            done[int(c)] = json.loads(record)
    pending = [int(c) for c in counts.index if int(c) not in done]
    print(f"analyze {method!r} by {args.by}: {len(counts)} classes, {len(meta)} maps; "
          f"{len(done)} classes already done, {len(pending)} to do")
    if pending:
        samples = class_samples(meta, args.by, pending, args.max_per_class, args.seed)
        wanted = set(np.concatenate(list(samples.values())).tolist())
        todo = meta[meta[args.by].isin(pending)]
        shards = sorted(todo["shard_id"].unique())
        del meta, todo
        tasks = tasks_for(args.in_process)
        tasks.start(args.ray_address)
        url = args.output
        one_cpu = {"num_cpus": 1, **worker_options()}  # each task: a CPU, and the driver's worker settings
        feats = tasks.remote(shard_features, **one_cpu)
        wanted_ref, config_ref = tasks.put(wanted), tasks.put(config)
        got = gather(tasks, [feats.remote(url, options, method, s, config_ref, wanted_ref) for s in shards])
        ids = np.concatenate([g[0] for g in got])
        classes = np.concatenate([g[1] for g in got])
        x = np.concatenate([g[2] for g in got])
        del got
        models, results = {}, {}
        task = tasks.remote(cluster_class, **one_cpu)
        refs = {}
        for c in pending:
            rows = np.flatnonzero(classes == c)
            rows = rows[np.argsort(ids[rows], kind="stable")]
            models[c] = {"ids": ids[rows], "x": x[rows]}
            refs[c] = task.remote(x[rows], config_ref)
        for c, ref in refs.items():
            results[c] = gather(tasks, ref)
            models[c].update(labels=results[c].labels, layout=results[c].layout, k=results[c].k)
            print(f"  class {c}: {len(models[c]['ids'])} sampled maps, eigengap k = {results[c].k}")
        models_ref = tasks.put(models)
        assign_task = tasks.remote(shard_assign, **one_cpu)
        parts = gather(tasks, [assign_task.remote(url, options, method, s, config_ref, models_ref) for s in shards])
        for c in pending:
            done[c] = write_class(where, c, parts, results[c], len(models[c]["ids"]), config)
    summary = {**config, "output": redact_url(args.output), "classes": [done[c] for c in sorted(done)],
               "seconds": round(time.perf_counter() - start, 1)}
    where.put_json("analysis.json", summary)
    for c in sorted(done):
        print(f"  class {c}: {done[c]['n']} maps in {done[c]['k']} clusters of {done[c]['sizes']} (relative eigengap "
              f"{done[c].get('gap', float('nan')):.2f})")
    print(f"done in {summary['seconds']} s: {redact_url(where.url)} (clusters/, means/, classes/, analysis.json)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("jobs.analyze", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
