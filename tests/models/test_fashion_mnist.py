"""Fashion-MNIST's class names have one home (models.fashion_mnist): the shipped model's spec and the
IDX source read them from there, and the torch-free readers can import it without loading torch."""

from __future__ import annotations

import subprocess
import sys

from models import fashion_mnist_spec
from models.fashion_mnist import FASHION_MNIST_CLASSES
from storage.sources import IDXSource, open_source
from tests.helpers import write_idx


def test_the_spec_and_the_idx_source_name_the_same_classes(tmp_path, fmnist) -> None:
    images, labels = fmnist
    write_idx(str(tmp_path / "fashion"), None, images[:5], labels[:5])
    source = open_source(str(tmp_path / "fashion"))
    assert isinstance(source, IDXSource) and source.classes == list(FASHION_MNIST_CLASSES)
    assert fashion_mnist_spec().class_names == list(FASHION_MNIST_CLASSES) and len(FASHION_MNIST_CLASSES) == 10


def test_the_class_names_and_the_sources_load_without_torch() -> None:
    code = "import sys, models.fashion_mnist, storage.sources, jobs.view; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
