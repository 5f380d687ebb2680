"""Generic object I/O over fsspec URLs, knowing nothing of maps or sources: opening a URL and its
errors and redaction (fs), one opened prefix (location), retrying transient store failures
(retry), the one-writer lease (lease) and the check that an output folder is the job's own
(outputs).

The bottom of storage/: storage.sources, storage.maps, storage.checkpoints and every layer above
use it, so a store's quirks are handled once (docs/design.md §3).
"""
