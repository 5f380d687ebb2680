"""Stored maps as the arrays evaluation libraries take: ``quantus_batch`` for Quantus.

Quantus metrics call ``model(x_batch)`` themselves, so ``x_batch`` must be the model's own input:
the image as the model saw it (``join_with_source``: channels converted, resized or cropped) and
normalized with the model's mean and std (``models.preprocess.preprocess``), not display pixels.
``a_batch`` is the stored map with a channel axis (Quantus' ``[N, 1, H, W]`` for single-channel
explanations), and ``y_batch`` the class each map explains (``target``, not the label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from storage.io.fs import InvalidStorageInput


def quantus_batch(url: str, method: str, *, shard: str | None = None, sample_ids: Sequence[str] | None = None,
                  source: Any = None, spec: Any = None, storage_options: Mapping[str, Any] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_batch [N, C, H, W] float32 normalized model input, y_batch [N] int64 targets,
    a_batch [N, 1, H, W] float32 maps)`` of one method's committed maps: of one ``shard``, or of
    ``sample_ids`` (in that order), or, with neither, the whole dataset (mind its size).

    ``source`` defaults to the one the run record names, ``spec`` (a ModelSpec or its dict) to the
    run record's model. A sample without a committed map (an error row, or not done yet) is an
    :class:`InvalidStorageInput` naming it: Quantus would otherwise score a shifted batch.
    """
    import pandas as pd

    from models.preprocess import preprocess
    from models.registry import ModelSpec
    from storage.maps.reader import join_with_source, read_maps, read_run, read_sample, read_shard

    run = read_run(url, storage_options) if source is None or spec is None else None
    if shard is not None and sample_ids is not None:
        raise InvalidStorageInput("quantus_batch takes shard= or sample_ids=, not both")
    if shard is not None:
        maps = read_shard(url, method, shard, storage_options)
    elif sample_ids is not None:
        frames = [read_sample(url, str(s), method, storage_options) for s in sample_ids]
        missing = [str(s) for s, f in zip(sample_ids, frames) if f.empty]
        if missing:
            raise InvalidStorageInput(f"{url} has no committed {method!r} map for samples {missing[:5]} "
                                      f"({len(missing)} in all): see storage.read_errors(url, {method!r})")
        maps = pd.concat(frames, ignore_index=True)
    else:
        maps = read_maps(url, method, storage_options)
    if maps.empty:
        raise InvalidStorageInput(f"{url} has no committed {method!r} maps there (method label? shard id?)")
    model_spec = spec if spec is not None else run["model"]
    if not isinstance(model_spec, ModelSpec):
        model_spec = ModelSpec.from_dict(model_spec.get("model", model_spec))
    joined = join_with_source(maps, source if source is not None else run["config"]["source"],
                              run if run is not None else model_spec, storage_options=storage_options)
    x_batch = preprocess(model_spec, list(joined["image"])).numpy().astype(np.float32)
    y_batch = maps["target"].to_numpy().astype(np.int64)
    a_batch = np.stack(list(maps["map"])).astype(np.float32)[:, None]
    return x_batch, y_batch, a_batch


__all__ = ["quantus_batch"]
