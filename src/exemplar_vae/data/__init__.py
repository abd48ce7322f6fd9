"""Data: IDX, MATLAB and image readers, checked downloads, fixed splits with binarisation, a name registry.

``load_dataset(name)`` returns a :class:`DataSplits`; wrap a split in :class:`IndexedDataset` to get
``(x, y, index)`` batches (use ``collate_fn=identity_collate``). Names: "fashion-mnist", "mnist",
"digits", "omniglot", "celeba", a path to an ``.npz`` file, or a path to a folder of images.

Modules: :mod:`~exemplar_vae.data.registry` (the name table, ``load_dataset``),
:mod:`~exemplar_vae.data.loaders` (one loader per named dataset, and image folders),
:mod:`~exemplar_vae.data.npz` (``.npz`` files), :mod:`~exemplar_vae.data.paths` (where the files
are, downloads), :mod:`~exemplar_vae.data.splits` (splits, binary or 8-bit, the seeds),
:mod:`~exemplar_vae.data.datasets` (``DataSplits``, binarisation, ``IndexedDataset``), and the
readers :mod:`~exemplar_vae.data.formats`, :mod:`~exemplar_vae.data.omniglot`,
:mod:`~exemplar_vae.data.celeba`, :mod:`~exemplar_vae.data.images`.
"""

from exemplar_vae.data.datasets import (
    DataSplits,
    IndexedDataset,
    check_8bit,
    dynamic_binarize,
    fixed_binarize,
    identity_collate,
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
from exemplar_vae.data.inputs import DataInput, as_splits, fingerprint
from exemplar_vae.data.loaders import (
    load_celeba,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    load_omniglot,
)
from exemplar_vae.data.npz import load_npz, npz_images, read_npz
from exemplar_vae.data.paths import DATA_ENV_VAR, IDX_SOURCES, IdxSource
from exemplar_vae.data.registry import DATASETS, Loader, canonical_name, default_data_dir, load_dataset
from exemplar_vae.data.splits import (
    SPLIT_SEED,
    TEST_BINARIZE_SEED,
    VAL_BINARIZE_SEED,
    binary_splits,
    eight_bit_splits,
    random_split_indices,
    seeded_split,
    set_binarization,
    take_train,
    validation_size,
)
from exemplar_vae.data.store import ExemplarStore, as_tensor

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "IDX_SOURCES",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "SPLIT_SEED",
    "TEST_BINARIZE_SEED",
    "VAL_BINARIZE_SEED",
    "DataSplits",
    "IdxSource",
    "IndexedDataset",
    "Loader",
    "binary_splits",
    "canonical_name",
    "check_8bit",
    "default_data_dir",
    "download",
    "dynamic_binarize",
    "eight_bit_splits",
    "find_file",
    "fixed_binarize",
    "identity_collate",
    "load_celeba",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "load_omniglot",
    "npz_images",
    "random_split_indices",
    "read_idx",
    "read_npz",
    "seeded_split",
    "set_binarization",
    "take_train",
    "validation_size",
    "ExemplarStore",
    "as_tensor",
    "DataInput",
    "as_splits",
    "fingerprint",
]
