"""Embeddings: the penultimate features of a dataset against its pixels.

* :func:`nearest_neighbours`: the ``k`` nearest other images of each query, in any vector space
  (Euclidean or cosine distance, float64, computed in row blocks on the device; ties broken by
  the lower dataset index; an image is never its own neighbour);
* :func:`label_agreement`: the mean share of an image's ``k`` nearest neighbours that carry its
  label — in feature space against pixel space, the number that says the features group
  images by class where the pixels do not;
* :func:`pixel_vectors`: the images as vectors (optionally area-resized first);
* :func:`tsne_map`: a 2-D map by t-SNE (van der Maaten & Hinton 2008; scikit-learn's ``TSNE``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DISTANCES = ("euclidean", "cosine")


def pairwise_distances(queries: Tensor, points: Tensor, metric: str = "euclidean") -> Tensor:
    """[Q, D], [N, D] -> [Q, N] float64 distances (Euclidean, or cosine = 1 - cos similarity)."""
    if metric not in DISTANCES:
        raise ValueError(f"unknown distance {metric!r}; valid: {', '.join(DISTANCES)}")
    queries, points = queries.double(), points.double()
    if metric == "cosine":
        return 1.0 - F.normalize(queries, dim=1) @ F.normalize(points, dim=1).t()
    squared = queries.pow(2).sum(1)[:, None] + points.pow(2).sum(1)[None, :] - 2.0 * queries @ points.t()
    return squared.clamp_min(0).sqrt()


def nearest_neighbours(points: Tensor, k: int, queries: Optional[Tensor] = None, metric: str = "euclidean",
                       block: int = 1024) -> Tuple[Tensor, Tensor]:
    """The ``k`` nearest neighbours among ``points`` [N, D] of each query (``queries``: indices
    into ``points`` [Q]; None: every point), the query itself excluded: (indices [Q, k] long,
    distances [Q, k] float64), nearest first, ties by lower index."""
    count = points.shape[0]
    if not 1 <= k <= count - 1:
        raise ValueError(f"k must be in 1..{count - 1} (N - 1 for {count} images); got {k}")
    queries = torch.arange(count, device=points.device) if queries is None else queries.to(points.device).long()
    found_index, found_distance = [], []
    for start in range(0, len(queries), block):
        rows = queries[start:start + block]
        distances = pairwise_distances(points[rows], points, metric)
        distances[torch.arange(len(rows), device=points.device), rows] = float("inf")
        order = distances.sort(dim=1, stable=True).indices[:, :k]  # stable: equal distances keep index order
        found_index.append(order)
        found_distance.append(distances.gather(1, order))
    return torch.cat(found_index), torch.cat(found_distance)


def label_agreement(neighbours: Tensor, labels: Tensor) -> float:
    """Mean over images of the share of their neighbours ([N, k] indices) with the same label."""
    labels = labels.to(neighbours.device)
    return float((labels[neighbours] == labels[:, None]).double().mean())


def pixel_vectors(images: Tensor, size: Optional[int] = None) -> Tensor:
    """images [B, 3, H, W] in [0, 1] -> [B, 3 * S * S] (``size`` S: area-resized first, the
    average of the pixels each output pixel covers; None: the images' own pixels)."""
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="area")
    return images.flatten(1).float()


def tsne_map(features: Tensor, seed: int = 0, perplexity: float = 30.0, metric: str = "euclidean",
             iterations: int = 1000) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A 2-D t-SNE embedding of ``features`` [N, D] (scikit-learn, PCA initialization, the
    given seed, ``iterations`` optimization steps: at least 250) and the settings used: the
    perplexity is capped below ``N`` as t-SNE requires (``min(perplexity, (N - 1) / 3)``)."""
    import inspect

    from sklearn.manifold import TSNE

    count = features.shape[0]
    if count < 3:
        raise ValueError(f"t-SNE needs at least 3 images; got {count}")
    if iterations < 250:
        raise ValueError(f"t-SNE needs at least 250 iterations; got {iterations}")
    used = float(min(perplexity, max(1.0, (count - 1) / 3)))
    # scikit-learn 1.5 renamed n_iter to max_iter
    steps = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    tsne = TSNE(n_components=2, perplexity=used, init="pca", random_state=int(seed), metric=metric,
                **{steps: int(iterations)})
    coordinates = tsne.fit_transform(features.detach().cpu().double().numpy())
    return coordinates, {"perplexity": used, "requested_perplexity": float(perplexity), "init": "pca",
                         "random_state": int(seed), "metric": metric, "iterations": int(iterations),
                         "implementation": "sklearn.manifold.TSNE"}
