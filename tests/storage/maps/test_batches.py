"""docs/format.md's Quantus snippet, run as written on a real attribute job's output: storage gives
x_batch / y_batch / a_batch and a Quantus metric scores them with the checkpoint's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs import attribute
from storage import StorageError, read_maps, read_run
from storage.maps.batches import quantus_batch
from storage.checkpoints import load_checkpoint

quantus = pytest.importorskip("quantus", reason="the Quantus snippet needs the dev extra: pip install quantus")
pytestmark = pytest.mark.slow  # trains a tiny model

N = 12


@pytest.fixture(scope="module")
def output(checkpoint, tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("quantus") / "maps")
    assert attribute.main(["--checkpoint", checkpoint, "--output", url, "--limit", str(N), "--shard-size", "6",
                           "--methods", "pathway gradient", "--in-process", "--no-progress"]) == 0
    return url


def test_format_md_snippet_runs_a_quantus_metric(output, checkpoint) -> None:
    url = output
    # --- docs/format.md, "Quantus" (the snippet as documented) ---
    import quantus
    import storage
    from storage.checkpoints import load_checkpoint

    model, spec = load_checkpoint(checkpoint)
    shard = storage.read_maps(url, "pathway", columns=["shard_id"])["shard_id"].iloc[0]
    x_batch, y_batch, a_batch = storage.quantus_batch(url, "pathway", shard=shard)
    scores = quantus.Sparseness(disable_warnings=True)(
        model=model, x_batch=x_batch, y_batch=y_batch, a_batch=a_batch, device="cpu")
    # --- end of snippet ---
    assert x_batch.shape == (6, 1, 28, 28) and x_batch.dtype == np.float32
    assert a_batch.shape == (6, 1, 28, 28) and a_batch.dtype == np.float32
    assert y_batch.dtype == np.int64 and len(scores) == 6 and np.all(np.isfinite(scores))
    maps = read_maps(url, "pathway")
    first = maps[maps.shard_id == shard]
    np.testing.assert_array_equal(a_batch[:, 0], np.stack(list(first["map"])).astype(np.float32))
    np.testing.assert_array_equal(y_batch, first["target"].to_numpy())
    # x_batch is the normalized model input: the model predicts the stored 'predicted' from it.
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_batch)).argmax(1).numpy()
    np.testing.assert_array_equal(predicted, first["predicted"].to_numpy())


def test_sample_ids_in_order_and_a_faithfulness_metric(output, checkpoint) -> None:
    model, _ = load_checkpoint(checkpoint)
    ids = list(read_maps(output, "gradient", columns=["sample_id"])["sample_id"])[::-3]
    x_batch, y_batch, a_batch = quantus_batch(output, "gradient", sample_ids=ids, spec=read_run(output)["model"])
    assert len(x_batch) == len(ids)
    maps = read_maps(output, "gradient").set_index("sample_id")
    np.testing.assert_array_equal(a_batch[:, 0], np.stack([maps.loc[s, "map"] for s in ids]).astype(np.float32))
    metric = quantus.FaithfulnessCorrelation(nr_runs=5, subset_size=56, perturb_baseline="black", abs=False,
                                             normalise=True, return_aggregate=False, disable_warnings=True)
    scores = metric(model=model, x_batch=x_batch, y_batch=y_batch, a_batch=a_batch, device="cpu")
    assert len(scores) == len(ids) and np.all(np.abs(scores) <= 1)


def test_missing_sample_is_named(output) -> None:
    with pytest.raises(StorageError, match="no-such"):
        quantus_batch(output, "pathway", sample_ids=["no-such"])
