"""Data: IDX readers and checked downloads, fixed splits with binarisation, and a name registry.

``load_dataset(name)`` returns a :class:`DataSplits`; wrap a split in :class:`IndexedDataset` to get
``(x, y, index)`` batches (use ``collate_fn=identity_collate``).
"""

from exemplar_vae.data.datasets import (
    DataSplits,
    IndexedDataset,
    dynamic_binarize,
    fixed_binarize,
    identity_collate,
    random_split_indices,
)
from exemplar_vae.data.formats import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_MIRRORS,
    MNIST_FILES,
    MNIST_MIRRORS,
    download,
    find_file,
    read_idx,
)
from exemplar_vae.data.registry import DATASETS, default_data_dir, load_dataset, load_npz

__all__ = [
    "DATASETS",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DataSplits",
    "IndexedDataset",
    "default_data_dir",
    "download",
    "dynamic_binarize",
    "find_file",
    "fixed_binarize",
    "identity_collate",
    "load_dataset",
    "load_npz",
    "random_split_indices",
    "read_idx",
]
