"""models.trust: what a spec's arch may import and call, checked before anything is imported or called."""

from __future__ import annotations

import sys

import pytest

from models import ModelError, ModelSpec, build_model
from models.archs import resolve
from models.trust import check_import_path, is_trusted, trusted_modules
from tests.nets import USER_NET_CLASS

USERMOD = """
from torch import nn
from torch.nn import Linear  # an installed class, re-exported
from os.path import join  # an installed function, re-exported

CALLS = []

""" + USER_NET_CLASS + """

class Pair(Net):
    def forward(self, x):
        return super().forward(x), x


def make(width: int = 4, **extra):
    CALLS.append(dict(extra, width=width))
    return Net(width)


def not_a_model():
    CALLS.append("not_a_model")
    return 42


def empty():
    return nn.Identity()


make_alias = join
"""


@pytest.fixture
def usermod(tmp_path, monkeypatch):
    (tmp_path / "usermod_trust.py").write_text(USERMOD)
    (tmp_path / "broken_trust.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usermod_trust"
    for name in ("usermod_trust", "broken_trust"):
        sys.modules.pop(name, None)


def spec(arch: str, **kwargs) -> ModelSpec:
    return ModelSpec(arch, 10, 1, (8, 8), (0.5,), (0.25,), arch_kwargs=kwargs)


def test_trust_lists_and_their_reach() -> None:
    assert trusted_modules("a, b.c,,a") == ("a", "b.c")
    assert trusted_modules(["x"]) == ("x",) and trusted_modules(None) == ()
    with pytest.raises(ModelError, match="'a/b' is not a module name"):
        trusted_modules("a/b")
    assert is_trusted("pkg", ["pkg"]) and is_trusted("pkg.sub.deep", ["pkg"])
    assert not is_trusted("pkgx", ["pkg"]) and not is_trusted("pkg", ["pkg.sub"])


@pytest.mark.parametrize(("path", "match"), [
    ("jobs.convert:main", "this project's own code"),
    ("jobs.report:main", "this project's own code"),
    ("tests.nets:TinyConvNet", "this project's own code"),
    ("models.small:ResNet8", "this project's own code"),
    ("PIL.__main__:x", "a program's __main__ module"),
    ("torch.utils.model_dump.__main__:main", "a program's __main__ module"),
    ("subprocess:Popen", "the standard library"),
    ("builtins:eval", "the standard library"),
    ("usermod_trust:__class__", "a private name"),
])
def test_never_callable_even_when_trusted(path: str, match: str) -> None:
    module = path.partition(":")[0]
    before = set(sys.modules)
    with pytest.raises(ModelError, match=f"{match}.*even with --trust-code"):
        check_import_path(path, [module, module.split(".")[0]])
    with pytest.raises(ModelError, match=match):
        resolve(path, trust_code=[module])
    assert set(sys.modules) == before  # refused before any import


def test_an_untrusted_module_is_refused_before_it_is_imported(usermod: str) -> None:
    with pytest.raises(ModelError, match=f"would import and run module '{usermod}', which is not trusted; pass "
                                         f"--trust-code {usermod}"):
        build_model(spec(f"{usermod}:Net"))
    assert usermod not in sys.modules
    with pytest.raises(ModelError, match="module 'torch.nn', which is not trusted"):
        build_model(spec("torch.nn:Linear", in_features=1, out_features=10))  # an installed nn.Module class


def test_trusted_code_is_checked_before_it_is_called(usermod: str) -> None:
    assert type(build_model(spec(f"{usermod}:make", width=3), trust_code=usermod)).__name__ == "Net"
    calls = sys.modules[usermod].CALLS
    assert calls == [{"width": 3}]
    with pytest.raises(ModelError, match=r"arch_kwargs must be JSON data \(numbers, strings"):
        build_model(spec(f"{usermod}:make", width=(3,)), trust_code=usermod)  # a tuple: JSON-able, not JSON
    with pytest.raises(ModelError, match=r"arch_kwargs \['depth'\] do not fit Net\(width: int = 4\)"):
        build_model(spec(f"{usermod}:Net", depth=2), trust_code=usermod)
    with pytest.raises(ModelError, match=r"'usermod_trust:make_alias' must be an nn.Module class, or a function "
                                         r"defined in 'usermod_trust' itself"):
        build_model(spec(f"{usermod}:make_alias"), trust_code=usermod)
    with pytest.raises(ModelError, match="returned int, not an nn.Module"):
        build_model(spec(f"{usermod}:not_a_model"), trust_code=usermod)
    with pytest.raises(ModelError, match="builds Identity, which has no parameters"):
        build_model(spec(f"{usermod}:empty"), trust_code=usermod)
    with pytest.raises(ModelError, match=r"returns a tuple for one 8x8 input, expected a logits tensor"):
        build_model(spec(f"{usermod}:Pair"), trust_code=usermod)
    assert calls == [{"width": 3}, "not_a_model"]  # refused calls never happened
    # A trusted module may name an installed class: it is built and run (here on the wrong input for a classifier).
    with pytest.raises(ModelError, match=r"'usermod_trust:Linear' returns shape \(1, 1, 1, 10\)"):
        build_model(ModelSpec("usermod_trust:Linear", 10, 1, (1, 1), (0.5,), (0.25,),
                              arch_kwargs={"in_features": 1, "out_features": 10}), trust_code=usermod)


def test_installed_functions_are_never_an_arch_even_when_trusted() -> None:
    with pytest.raises(ModelError, match=r"'torch.hub:load' must be an nn.Module class, or a function defined in "
                                         r"'torch.hub' itself \(your own code, not an installed package's\)"):
        build_model(spec("torch.hub:load", repo_or_dir="x", model="y"), trust_code="torch")
    with pytest.raises(ModelError, match="builds Identity, which has no parameters"):
        build_model(spec("torch.nn:Identity"), trust_code="torch")


def test_a_trusted_module_that_fails_to_import_is_one_line(usermod: str) -> None:
    with pytest.raises(ModelError, match=r"importing 'broken_trust' failed: RuntimeError: no GPU here"):
        build_model(spec("broken_trust:Net"), trust_code="broken_trust")


def test_the_operators_own_arch_flag_trusts_its_module(usermod: str) -> None:
    """jobs.train --arch and jobs.convert --arch are the operator's: their module needs no --trust-code."""
    from jobs.runtime.cli import trust_of
    from jobs.train import arch_name, parse_args

    assert arch_name(f"{usermod}:Net") == f"{usermod}:Net"
    args = parse_args(["--arch", f"{usermod}:Net", "--trust-code", "a,b", "--trust-code", "c"])
    assert trust_of(args, args.arch) == ("a", "b", "c", usermod)
    with pytest.raises(SystemExit):
        parse_args(["--arch", "jobs.convert:main"])
