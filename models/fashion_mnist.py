"""Fashion-MNIST's facts, in one place: its class names (in label order) and its pixel statistics.

The shipped model's spec (models.registry.fashion_mnist_spec) and the IDX source that reads the
dataset (storage.sources.idx) both need the class names; this module imports nothing, so the
torch-free readers (jobs.view, jobs.inspect, storage.sources) can import it without loading torch.
"""

from __future__ import annotations

#: The ten class names, index = the label stored in the IDX labels file.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
#: Per-channel mean / std of the train split, pixels scaled to [0, 1].
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
