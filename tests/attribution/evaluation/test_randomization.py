import pytest
import torch
from torch import nn

from attribution.evaluation.randomization import EvaluationError, cascade, execution_order, randomized
from models.tv import models as tv_models


class DefinedBackwards(nn.Module):
    """Modules defined in the opposite order to the one they run in, plus an unused head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _steps(model: nn.Module, **kw) -> list[str]:
    return [name for name, _ in cascade(model, **kw)]


def test_resnet18_cascade_runs_from_fc_to_conv1():
    steps = cascade(tv_models.resnet18(num_classes=10), example=torch.zeros(1, 3, 32, 32))
    names = [s for s, _ in steps]
    assert names == ["fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0",
                     "layer1.1", "layer1.0", "bn1", "conv1"]
    block = dict(steps)["layer4.0"]
    # Reverse execution order: torchvision's BasicBlock runs its downsample after bn2.
    assert block == ["layer4.0.downsample.1", "layer4.0.downsample.0", "layer4.0.bn2", "layer4.0.conv2",
                     "layer4.0.bn1", "layer4.0.conv1"]
    per_module = _steps(tv_models.resnet18(num_classes=10), group="module")
    assert per_module[0] == "fc" and per_module[-2:] == ["bn1", "conv1"] and len(per_module) == 41


def test_resnet50_steps_match_the_papers_fc_block15_block0_conv1():
    names = _steps(tv_models.resnet50(num_classes=10))  # default example: a 64 px zero image
    blocks = [n for n in names if n.startswith("layer")]
    assert len(blocks) == 16
    assert names[0] == "fc" and blocks[0] == "layer4.2" and blocks[15] == "layer1.0" and names[-1] == "conv1"
    assert names.index("layer4.2") == 1  # "block 15" comes right after fc


def test_execution_order_not_definition_order_and_sequential_nets():
    model = DefinedBackwards()
    assert execution_order(model, torch.zeros(1, 2, 5, 5)) == ["conv", "bn", "fc"]
    assert cascade(model, example=torch.zeros(1, 2, 5, 5)) == [("fc", ["fc"]), ("bn", ["bn"]), ("conv", ["conv"])]
    seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert _steps(seq, example=torch.zeros(1, 1, 8, 8)) == ["6", "3", "2", "0"]  # one step per layer
    blocks = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), nn.Flatten(), nn.Linear(8, 2))
    assert cascade(blocks, example=torch.zeros(1, 1, 4, 4), group="module") == [("2", ["2"]), ("0.1", ["0.1"]),
                                                                                ("0.0", ["0.0"])]


def test_a_model_the_guess_does_not_fit_asks_for_an_example():
    seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 6 * 6, 5))
    with pytest.raises(EvaluationError, match="example="):
        cascade(seq)
    assert _steps(seq, example=torch.zeros(1, 1, 8, 8)) == ["2", "0"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_randomized_changes_exactly_the_chosen_modules_and_leaves_the_input_alone():
    torch.manual_seed(0)
    model = tv_models.resnet18(num_classes=10).eval()
    example = torch.zeros(1, 3, 32, 32)
    steps = cascade(model, example=example)
    before = _state(model)
    copy = randomized(model, "layer4.0", std=0.1, seed=5, steps=steps)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model changed"
    chosen = {m for _, mods in steps[:3] for m in mods}  # fc, layer4.1, layer4.0
    params = dict(copy.named_parameters())
    for key, value in copy.state_dict().items():
        module = key.rsplit(".", 1)[0]
        if module in chosen and key in params:
            assert not torch.equal(value, before[key]), f"{key} was not redrawn"
        else:  # other modules' parameters and every buffer (BN running stats) are kept
            assert torch.equal(value, before[key]), f"{key} changed"
    fc = copy.fc.requires_grad_(False)
    assert abs(float(fc.weight.std()) - 0.1) < 0.01 and abs(float(fc.weight.mean())) < 0.01
    assert fc.bias is not None and not torch.equal(fc.bias, model.fc.bias)
    assert float(copy.layer4[0].bn1.weight.detach().abs().max()) < 1.0  # gamma redrawn from N(0, 0.1), not ones
    assert copy.training == model.training


def test_randomized_is_seeded_per_module_and_cascades_consistently():
    model = DefinedBackwards()
    steps = cascade(model, example=torch.zeros(1, 2, 5, 5))
    one = randomized(model, 0, steps=steps, seed=1)
    two = randomized(model, "bn", steps=steps, seed=1)
    assert torch.equal(one.fc.weight, two.fc.weight)  # step 0's draws do not depend on how far we go
    assert torch.equal(one.bn.weight, model.bn.weight) and not torch.equal(two.bn.weight, model.bn.weight)
    assert not torch.equal(randomized(model, 0, steps=steps, seed=2).fc.weight, one.fc.weight)
    last = randomized(model, -1, steps=steps)
    assert torch.equal(last.unused.weight, model.unused.weight)  # never runs, never randomized
    for name in ("fc", "bn", "conv"):
        assert not torch.equal(getattr(last, name).weight, getattr(model, name).weight)
        assert not torch.equal(getattr(last, name).bias, getattr(model, name).bias)
    only_bn = randomized(model, "bn", steps=steps, independent=True)
    assert torch.equal(only_bn.fc.weight, model.fc.weight) and not torch.equal(only_bn.bn.weight, model.bn.weight)


def test_bad_steps():
    model = DefinedBackwards()
    steps = cascade(model, example=torch.zeros(1, 2, 5, 5))
    with pytest.raises(EvaluationError, match="unknown step"):
        randomized(model, "layer9", steps=steps)
    with pytest.raises(EvaluationError, match="out of range"):
        randomized(model, 3, steps=steps)
    with pytest.raises(EvaluationError, match="group"):
        cascade(model, group="layer")


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_reset_mode_reinitializes_like_quantus_and_leaves_the_callers_rng_alone():
    torch.manual_seed(0)
    model = tv_models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # trained-looking BN statistics, so a reset is visible
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    steps = cascade(model, example=torch.zeros(1, 3, 32, 32), group="module")
    state = torch.get_rng_state()
    copy = randomized(model, "layer4.1.bn2", seed=3, steps=steps, mode="reset")
    assert torch.equal(torch.get_rng_state(), state)
    names = [s for s, _ in steps]
    assert names[:3] == ["fc", "layer4.1.bn2", "layer4.1.conv2"]
    bn = copy.layer4[1].bn2
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # reset resets the statistics too
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(copy.layer4[1].conv2.weight, model.layer4[1].conv2.weight)  # not chosen
    assert torch.equal(copy.layer4[1].bn1.running_mean, model.layer4[1].bn1.running_mean)
    fc = copy.fc.weight.detach()
    bound = 1 / 512 ** 0.5  # nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(fc.abs().max()) <= bound and float(fc.std()) > 0.5 * bound / 3 ** 0.5
    again = randomized(model, 1, seed=3, steps=steps, mode="reset")
    assert torch.equal(again.fc.weight, copy.fc.weight)  # seeded per module name
    assert not torch.equal(randomized(model, 0, seed=4, steps=steps, mode="reset").fc.weight, copy.fc.weight)


def test_reset_mode_names_modules_it_cannot_reset():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), NoReset(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    steps = cascade(model, example=torch.zeros(1, 1, 6, 6))
    assert [s for s, _ in steps] == ["3", "1", "0"]
    randomized(model, 0, steps=steps, mode="reset")
    with pytest.raises(EvaluationError, match="reset_parameters"):
        randomized(model, 1, steps=steps, mode="reset")
    with pytest.raises(EvaluationError, match="mode"):
        randomized(model, 0, steps=steps, mode="zero")
