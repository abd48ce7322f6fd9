"""Data: IDX, MATLAB and image readers, checked downloads, fixed splits with binarisation, a name registry.

``load_dataset(name)`` returns a :class:`DataSplits`; wrap a split in :class:`IndexedDataset` to get
``(x, y, index)`` batches (use ``collate_fn=identity_collate``). Names: "fashion-mnist", "mnist",
"digits", "omniglot", "celeba", a path to an ``.npz`` file, or a path to a folder of images.
"""

from exemplar_vae.data.datasets import (
    DataSplits,
    IndexedDataset,
    check_8bit,
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
from exemplar_vae.data.registry import (
    DATASETS,
    default_data_dir,
    load_celeba,
    load_dataset,
    load_image_folder,
    load_npz,
    load_omniglot,
)

__all__ = [
    "DATASETS",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DataSplits",
    "IndexedDataset",
    "check_8bit",
    "default_data_dir",
    "download",
    "dynamic_binarize",
    "find_file",
    "fixed_binarize",
    "identity_collate",
    "load_celeba",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "load_omniglot",
    "random_split_indices",
    "read_idx",
]
