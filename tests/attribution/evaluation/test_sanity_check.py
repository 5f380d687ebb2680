"""The sanity check end to end: cascading randomization of ResNet-8 on real Fashion-MNIST images.

An untrained ResNet-8 shows the effect of Adebayo et al. robustly (measured over model seeds
0-3 and two randomization seeds: gradient's |Spearman| <= 0.32 at every step, guided
backprop's >= 0.87 after fc), and costs ~1 s instead of ~10 s of training.
"""

import numpy as np
import pytest
import torch

import attribution
from attribution.evaluation import cascade, compare, randomized
from models.preprocess import preprocess
from models.registry import build_model, fashion_mnist_spec


def _curve(method: str, model, steps, x, target) -> np.ndarray:
    """Mean |Spearman| of the maps after each cascade step against the original maps."""
    def maps(m):
        return attribution.reduce_map(attribution.get(method, m).attribute(x, target=target), "max_abs")

    original = maps(model)
    return np.array([np.nanmean(compare(original, maps(randomized(model, k, steps=steps, seed=0)))["spearman_abs"])
                     for k in range(len(steps))])


@pytest.fixture(scope="module")
def setup(fmnist_test):
    spec = fashion_mnist_spec()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = preprocess(spec, fmnist_test[0][:16])
    steps = cascade(model, example=x[:1])
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, steps, x, target


def test_resnet8_cascade(setup):
    _, steps, _, _ = setup
    assert [s for s, _ in steps] == ["fc", "layer3.0", "layer2.0", "layer1.0", "bn1", "conv1"]


def test_model_independent_maps_fail_the_check_and_gradient_passes(setup):
    model, steps, x, target = setup
    sobel = _curve("sobel", model, steps, x, target)
    gradient = _curve("gradient", model, steps, x, target)
    guided = _curve("guided_backprop", model, steps, x, target)
    np.testing.assert_allclose(sobel, 1.0)  # an edge detector ignores every weight
    assert np.all(gradient < 0.45), gradient  # gradient depends on the weights from the first step on
    # Guided backprop ignores the top layer's weights (the paper's .991 after fc) ...
    assert guided[0] > 0.8 and guided[0] > gradient[0] + 0.5, (guided, gradient)
    # ... but not the early convolutions: after the full cascade it has fallen too.
    assert guided[-1] < guided[0] - 0.4, guided
