"""The map dataset format (docs/format.md): the run's write lifecycle (sink: MapSink), the shard
writer under it (writer: MapStore), its Parquet schemas (tables), zarr arrays (zarr_maps), commit
records (manifest), shard plan (plan, plan_changes), format versions (versions), and the readers
(reader, batches).

One home for everything that knows the on-disk layout, so the format has one owner
(docs/design.md §3, §5). Uses storage.io and storage.sources; used by workers and jobs.
"""
