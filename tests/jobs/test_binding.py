"""An output is bound to the configuration that made its maps (jobs.binding)."""

from __future__ import annotations

import pytest

from attribution import MethodSpec
from jobs.binding import check, fingerprint
from jobs.cli import JobError
from models import fashion_mnist_spec
from workers.tasks import JobConfig


def config(methods=(("pathway", {"percentile": 70.0}), ("gradient", {})), **changes) -> JobConfig:
    specs = tuple(MethodSpec(name, params) for name, params in methods)
    return JobConfig(**{"source": "fashion-mnist", "checkpoint": "a.pt", "output": "out", "methods": specs, **changes})


def print_of(cfg: JobConfig, sha: str = "abc", spec=None) -> dict:
    return fingerprint(cfg, spec or fashion_mnist_spec(), sha, {m.label: m.params for m in cfg.methods}, 2)


def test_the_first_run_binds_the_output() -> None:
    kept, added = check(None, print_of(config()), "out")
    assert added == ["pathway", "gradient"] and kept["checkpoint_sha256"] == "abc"


def test_the_same_configuration_again_adds_nothing() -> None:
    stored, _ = check(None, print_of(config()), "out")
    assert check(stored, print_of(config(checkpoint="moved/a.pt")), "out") == (stored, [])  # the URL is not the model


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": (("pathway", {"percentile": 50.0}), ("gradient", {}))}, "method 'pathway' was .*70.*is .*50"),
    ({"split": "train"}, "split was \"test\", is \"train\""),
    ({"reduction": "max_abs"}, "reduction was"),
    ({"sha": "def"}, "checkpoint_sha256 was \"abc\", is \"def\""),
    ({"spec": fashion_mnist_spec().replace(input_size=(32, 32))}, "model_input was"),
])
def test_a_changed_configuration_is_refused_with_what_changed_and_the_fix(change: dict, message: str) -> None:
    stored, _ = check(None, print_of(config()), "out")
    sha, spec = change.pop("sha", "abc"), change.pop("spec", None)
    with pytest.raises(JobError, match=f"out holds maps made with another configuration: {message}.*new --output"):
        check(stored, print_of(config(**change), sha, spec), "out")


def test_a_new_method_label_is_added() -> None:
    stored, _ = check(None, print_of(config()), "out")
    base = config()
    more = JobConfig(source=base.source, checkpoint=base.checkpoint, output=base.output,
                     methods=(*base.methods, MethodSpec("pathway", {"percentile": 50.0}, "p50")))
    kept, added = check(stored, print_of(more), "out")
    assert added == ["p50"] and set(kept["methods"]) == {"pathway", "gradient", "p50"}
