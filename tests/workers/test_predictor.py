"""workers.predictor.Predictor without Ray, a store or threads: decoded samples in, maps, details and
error rows out, with the tiny trained ResNet-8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attribution
from attribution import MethodSpec
from models.preprocess import preprocess
from storage.checkpoints import load_checkpoint
from storage.sources import Sample
from tests.helpers import fashion_mnist
from workers.predictor import Predictor, column_kinds


@pytest.fixture(scope="module")
def model_and_spec(checkpoint):
    model, spec = load_checkpoint(checkpoint)
    return model.eval(), spec


def samples(count: int) -> list[Sample]:
    images, labels = fashion_mnist("test", count)
    return [Sample(f"s{i}", images[i], int(labels[i])) for i in range(count)]


def test_maps_are_the_methods_maps_reduced_with_their_details(model_and_spec) -> None:
    model, spec = model_and_spec
    predictor = Predictor(model, spec, (MethodSpec("pathway"), MethodSpec("gradient")))
    batch = samples(4)
    parts, errors = predictor.predict(batch, ["pathway", "gradient"])
    assert errors == [] and set(parts) == {"pathway", "gradient"}
    x = preprocess(spec, [s.image for s in batch], torch.device("cpu"))
    target = model(x).argmax(1)
    direct = attribution.reduce_map(attribution.get("gradient", model).attribute(x, target=target).float(),
                                    "signed_max_abs")
    mapped, maps, details = parts["gradient"][0]
    assert [s.sample_id for s in mapped] == ["s0", "s1", "s2", "s3"] and maps.shape == (4, 28, 28)
    torch.testing.assert_close(maps, direct)
    assert details["target"].tolist() == target.tolist()
    records = predictor.records("pathway", parts["pathway"])
    assert list(records.sample_ids) == ["s0", "s1", "s2", "s3"] and records.shape == (28, 28)
    assert set(records.details) == set(predictor.methods["pathway"].detail_schema)
    assert records.detail_types == predictor.kinds == column_kinds([m.detail_schema for m in predictor.methods.values()])


def test_a_sample_the_model_cannot_take_is_an_error_row_and_the_rest_is_mapped(model_and_spec) -> None:
    model, spec = model_and_spec
    predictor = Predictor(model, spec, (MethodSpec("gradient"),))
    batch = samples(3)
    batch[1] = Sample("flat", np.zeros(784, np.uint8), 0)  # not [H, W, C]
    parts, errors = predictor.predict(batch, ["gradient"])
    assert [(e.sample_id, e.kind) for e in errors] == [("flat", "preprocess")] and "shape (784,)" in errors[0].reason
    assert [s.sample_id for part, _, _ in parts["gradient"] for s in part] == ["s0", "s2"]
    empty = predictor.records("gradient", [])
    assert len(empty) == 0 and empty.maps.shape == (0, 28, 28)


def test_target_label_explains_each_samples_label(model_and_spec) -> None:
    model, spec = model_and_spec
    batch = samples(4)
    for sample in batch:
        sample.label = (sample.label + 1) % spec.num_classes  # mostly not what the model predicts
    parts, _ = Predictor(model, spec, (MethodSpec("gradient"),), target="label").predict(batch, ["gradient"])
    assert parts["gradient"][0][2]["target"].tolist() == [s.label for s in batch]


def test_a_batch_whose_every_sample_fails_attribution_raises(model_and_spec) -> None:
    """Not the data's fault (a Grad-CAM layer with no spatial output): the caller fails the shard."""
    model, spec = model_and_spec
    predictor = Predictor(model, spec, (MethodSpec("grad_cam", {"layer": "fc"}),))
    with pytest.raises(attribution.AttributionError, match="fc"):
        predictor.predict(samples(2), ["grad_cam"])
