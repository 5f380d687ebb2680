"""Method parameters are checked against each method's signature before its constructor runs: they
come from command lines and from stored run.json files, so a wrong name or type is one
AttributionError naming the method, the parameter and what it takes, never a bare ValueError or
TypeError from inside the method."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import attribution
from attribution import AttributionError, MethodSpec, check_params, get, parameters


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("name", attribution.available())
def test_every_parameter_of_every_method_refuses_a_wrong_type_in_one_line(name, net) -> None:
    accepted = parameters(name)
    signature = inspect.signature(attribution.method_class(name).__init__).parameters
    assert set(accepted) == set(signature) - {"self", "model"}
    for param in accepted:
        with pytest.raises(AttributionError) as caught:
            get(name, net, **{param: {"not": "a parameter value"}})
        message = str(caught.value)
        assert f"method {name!r}: parameter {param!r} takes " in message and "\n" not in message


@pytest.mark.parametrize("name", attribution.available())
def test_unknown_parameters_name_the_ones_the_method_takes(name, net) -> None:
    with pytest.raises(AttributionError, match=rf"method '{name}' has no parameter 'bogus'; it takes ") as caught:
        MethodSpec(name, {"bogus": 1}).build(net)
    for param in parameters(name):
        assert param in str(caught.value)


@pytest.mark.parametrize("params, says", [
    ({"percentile": "abc"}, r"parameter 'percentile' takes a number, got 'abc'"),
    ({"percentile": True}, r"parameter 'percentile' takes a number, got True"),
    ({"percentile": None}, r"parameter 'percentile' takes a number, got None"),
    ({"per_layer": "yes"}, r"parameter 'per_layer' takes true or false"),
    ({"steps": 2.5, "scores": "greedy"}, r"parameter 'steps' takes an integer or null, got 2.5"),
    ({"activations": 5}, r"parameter 'activations' takes a string or a list of strings, got 5"),
    ({"activations": ["relu", 3]}, r"parameter 'activations' takes a string or a list of strings"),
    ({"percentile": 100}, r"percentile must be in \[0, 100\)"),  # the method's own check, as before
    ({"percentile": float("nan")}, r"percentile must be in \[0, 100\)"),
])
def test_pathway_parameters(params, says, net) -> None:
    with pytest.raises(AttributionError, match=says):
        get("pathway", net, **params)


def test_values_of_the_right_type_pass(net) -> None:
    check_params("pathway", {"percentile": 70, "scores": "integrated", "steps": 4, "per_layer": False,
                             "activations": ["relu", "gelu"], "allow_partial": True})
    check_params("integrated_gradients", {"n_steps": 8, "internal_batch_size": None})
    check_params("smoothgrad", {"noise_level": 0.2})  # an int or a float for a float
    assert get("pathway", net, percentile=30).params["percentile"] == 30.0


def test_a_value_error_inside_a_constructor_is_an_attribution_error(net) -> None:
    @attribution.register("_test_raises")
    class Raises(attribution.Attribution):
        def __init__(self, model: nn.Module, size: int = 1) -> None:
            super().__init__(model)
            raise ValueError(f"size {size} does not divide the input")

        def _attribute(self, inputs, targets, seeds):  # pragma: no cover - never built
            raise AssertionError

    try:
        with pytest.raises(AttributionError, match=r"bad parameters for method '_test_raises': size 3 does not"):
            get("_test_raises", net, size=3)
    finally:
        from attribution import registry

        registry._REGISTRY.pop("_test_raises")
