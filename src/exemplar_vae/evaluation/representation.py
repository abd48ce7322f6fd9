"""Representations: kNN classification on encoder means, and a t-SNE map of the codes.

The protocol of Norouzi et al. (2020), Sec. 5 (docs/paper.md §8): a code is the encoder mean mu_phi(x) of a
grey (non-binarised) image; the index holds the codes of the training images, the queries are the codes
of the test images; distances are Euclidean; a query takes the majority label of its k nearest codes.
The paper's index also holds the validation images (``include_val=True`` here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exemplar_vae.data import DataSplits, ExemplarStore, as_tensor
from exemplar_vae.errors import ConfigError
from exemplar_vae.models.vae import VAE
from exemplar_vae.optional import require
from exemplar_vae.retrieval import encode_means, knn_search
from exemplar_vae.viz import plot_embedding

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 3, 5, 7, 9, 11, 13, 15)


def encode_codes(model: VAE, x: Tensor | ExemplarStore, batch_size: int = 2000) -> Tensor:
    """Encoder means mu_phi(x), without gradient, in batches: [N, D] -> [N, d] on the model's device."""
    return encode_means(model.encoder, x, batch_size, device=model.device)


def majority_vote(neighbour_labels: Tensor, k: int) -> Tensor:
    """The majority label among each query's k nearest neighbours.

    Ties go to the nearest neighbour whose label is among the tied classes (so k = 1 is the nearest
    neighbour's label, and a 2-2 split among four neighbours goes to the class of the closer one).

    Args:
        neighbour_labels: [Q, K] labels (>= 0) of the neighbours, nearest first; K >= k.
        k: neighbours that vote.

    Returns:
        [Q] int64 predicted labels.
    """
    labs = neighbour_labels[:, :k]  # [Q, k]
    votes = torch.zeros(labs.shape[0], int(labs.max()) + 1, dtype=torch.int64, device=labs.device)
    votes.scatter_add_(1, labs, torch.ones_like(labs))  # [Q, C] votes per class
    tied = votes == votes.max(dim=1, keepdim=True).values  # [Q, C] the classes with the most votes
    winner = tied.gather(1, labs).to(torch.int32)  # [Q, k]: 1 where neighbour j's class is a winner
    first = winner.argmax(dim=1, keepdim=True)  # [Q, 1] nearest such neighbour (argmax returns the first)
    return labs.gather(1, first).squeeze(1)  # [Q]


def _check_ks(ks: Sequence[int], index_size: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ConfigError("the kNN probe needs at least one k")
    if ks[0] < 1 or ks[-1] > index_size:
        raise ConfigError(f"every k must be between 1 and the index size {index_size}, got {ks}")
    return ks


def _labels_or_error(y: Tensor, what: str, name: str) -> Tensor:
    if y.numel() == 0 or bool((y < 0).any()):
        missing = int((y < 0).sum())
        raise ConfigError(
            f"{name}: {missing} of {y.numel()} {what} images have no label (-1); the kNN probe needs "
            "labelled training and test images"
        )
    return y


def probe_queries(data: DataSplits) -> tuple[Tensor, str]:
    """The test images used as queries: the grey ones when the data kept them, else the binarised ones."""
    if data.test_grey is not None:
        return data.test_grey, "grey"
    logger.warning("%s keeps no grey test images; the kNN probe uses the binarised ones", data.name)
    return data.test_x, "binarised"


@torch.no_grad()
def knn_probe(
    model: VAE,
    data: DataSplits,
    ks: Sequence[int] = DEFAULT_KS,
    include_val: bool = False,
    batch_size: int = 2000,
    backend: str = "auto",
) -> dict[str, Any]:
    """kNN classification of test codes against training codes, for several k.

    Args:
        model: the trained VAE.
        data: labelled splits; the index is ``data.train_x`` (grey), the queries ``data.test_grey`` (or
            ``data.test_x`` when the grey test images were not kept).
        ks: numbers of neighbours (each between 1 and the index size).
        include_val: also put the validation images (grey when kept) in the index, as the paper does.
        batch_size: images encoded together.
        backend: kNN search backend ("auto": faiss when installed; see ``retrieval.knn_search``).

    Returns:
        {"dataset", "latent_dim", "index" ("train" or "train+val"), "index_size", "queries",
         "query_images" ("grey" or "binarised"), "distance", "results": [{"k", "correct",
         "accuracy_percent", "error_percent"}, ...] in increasing k}.

    Raises:
        ConfigError: a train, validation (with ``include_val``) or test label is missing (-1), or a k
            is out of range.
    """
    index_x, index_y = data.train_x, _labels_or_error(data.train_y, "training", data.name)
    if include_val:
        val_x = data.val_grey if data.val_grey is not None else data.val_x
        index_x = torch.cat([as_tensor(index_x), val_x])
        index_y = torch.cat([index_y, _labels_or_error(data.val_y, "validation", data.name)])
    test_y = _labels_or_error(data.test_y, "test", data.name)
    ks = _check_ks(ks, index_x.shape[0])
    queries, kind = probe_queries(data)
    index_codes = encode_codes(model, index_x, batch_size)  # [N, d]
    query_codes = encode_codes(model, queries, batch_size)  # [Q, d]
    _, nearest = knn_search(query_codes, index_codes, ks[-1], backend)  # [Q, K] nearest first
    # vote on class ranks 0..C-1 (labels may be any integers, e.g. large ids in a user's .npz)
    classes, ranks = torch.unique(index_y, return_inverse=True)  # [C], [N]
    neighbour_labels = ranks.to(nearest.device)[nearest]  # [Q, K]
    test_y = test_y.to(nearest.device)
    results = []
    for k in ks:
        predicted = classes.to(nearest.device)[majority_vote(neighbour_labels, k)]  # [Q] labels
        correct = int((predicted == test_y).sum())
        accuracy = 100.0 * correct / test_y.shape[0]
        results.append(
            {"k": k, "correct": correct, "accuracy_percent": accuracy, "error_percent": 100 - accuracy}
        )
    return {
        "dataset": data.name,
        "latent_dim": int(index_codes.shape[1]),
        "index": "train+val" if include_val else "train",
        "index_size": int(index_x.shape[0]),
        "queries": int(queries.shape[0]),
        "query_images": kind,
        "distance": "euclidean",
        "results": results,
    }


def probe_table(result: dict[str, Any]) -> str:
    """A markdown caption line and table (k, accuracy %, error %) of a ``knn_probe`` result."""
    lines = [
        f"kNN classification on encoder means (d={result['latent_dim']}) of {result['dataset']}: index "
        f"{result['index_size']} {result['index']} codes, {result['queries']} {result['query_images']} test "
        f"queries, {result['distance']} distance, majority vote (ties: nearest neighbour).",
        "",
        "| k | accuracy (%) | error (%) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['k']} | {r['accuracy_percent']:.2f} | {r['error_percent']:.2f} |" for r in result["results"]
    ]
    return "\n".join(lines) + "\n"


def tsne_plot(
    model: VAE,
    data: DataSplits,
    path: str | Path,
    points: int = 2000,
    seed: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
) -> Path:
    """A 2-D t-SNE map (scikit-learn) of test codes, coloured by label, saved as PNG.

    Args:
        model: the trained VAE.
        data: the splits; ``points`` test images (grey when kept) are drawn at random (seeded).
        path: the .png file, written atomically.
        points: how many test codes to map (at most the test set; at least 5).
        seed: picks the points and seeds t-SNE.
        perplexity: t-SNE perplexity (lowered to (n - 1) / 3 for few points).
        title: the figure's title (default: what was mapped).

    Returns:
        ``path``.

    Raises:
        ConfigError: a bad path or point count, or scikit-learn or matplotlib (the ``tsne`` extra) is
            not installed (checked before any work).
    """
    # optional and slow to import: the tsne extra brings both (checked up front, before encoding)
    manifold = require("sklearn.manifold", "tsne", "the t-SNE map")
    require("matplotlib", "tsne", "the t-SNE map")

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"the t-SNE map must be a .png file, got '{path}'")
    if points < 5:
        raise ConfigError(f"the t-SNE map needs at least 5 points, got {points}")
    queries, kind = probe_queries(data)
    n = min(points, queries.shape[0])
    pick = torch.randperm(queries.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    codes = encode_codes(model, queries[pick]).double().cpu().numpy()  # [n, d]
    tsne = manifold.TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed)
    embedding = tsne.fit_transform(codes)  # [n, 2]
    labels = data.test_y[pick].cpu().numpy().astype(np.int64)
    if title is None:
        title = f"t-SNE of {n} {data.name} test codes ({kind} images, d={codes.shape[1]})"
    return plot_embedding(embedding, labels, path, title)
