"""Training of the synthetic-shapes CNN (CPU, about 2 minutes on 2 cores).

Retrain the shipped weights (``models/weights/synthetic_cnn.pt``) with::

    python -m salbench.models.training --out models/weights/synthetic_cnn.pt

Other recipes are trained on first use by ``create_model("synthetic_cnn", seed=1)`` and cached.
Weights trained on another CPU family differ in their last bits (and so, after thresholds, in
some scores): that is why the package ships one trained file.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm


def _materialize(split: str, num_images: int, seed: int, image_size: int) -> Tuple[Tensor, Tensor]:
    from salbench.datasets.synthetic import SyntheticShapes

    dataset = SyntheticShapes(num_images=num_images, split=split, seed=seed, image_size=image_size)
    images = torch.empty(num_images, 3, image_size, image_size)
    labels = torch.empty(num_images, dtype=torch.long)
    for i in tqdm(range(num_images), desc=f"generate {split}", leave=False, mininterval=1.0):
        sample = dataset[i]
        images[i], labels[i] = sample["image"], sample["label"]
    return images, labels


def evaluate_accuracy(bundle, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``bundle`` on [0, 1] images [N, 3, H, W]."""
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = bundle.module(bundle.normalize(images[start : start + batch_size]))
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block, so that
    concurrent jobs on one machine (joblib / submitit-local sweeps) train a model once: the
    others wait, then find the weights. Without ``fcntl`` (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_synthetic_cnn(recipe, path: Path) -> float:
    """Train ``SyntheticCNN`` with ``recipe`` (a :class:`salbench.models.synthetic_cnn.SyntheticTraining`), save
    ``{"state_dict", "val_accuracy", "recipe"}`` atomically to ``path``; return val accuracy.
    Concurrent calls for one ``path`` train once: the others wait and read the saved file."""
    path = Path(path)
    with exclusive(path.with_name(path.name + ".lock")):
        if path.exists():  # trained by a concurrent job while this one waited
            return float(torch.load(path, map_location="cpu", weights_only=True).get("val_accuracy", float("nan")))
        return _train_and_save(recipe, path)


def _train_and_save(recipe, path: Path) -> float:
    from salbench.datasets.synthetic import CLASS_NAMES
    from salbench.models.bundle import ModelBundle
    from salbench.models.synthetic_cnn import MEAN, STD, SyntheticCNN

    torch.manual_seed(recipe.seed)
    train_x, train_y = _materialize("train", recipe.num_train, recipe.seed, recipe.image_size)
    val_x, val_y = _materialize("val", recipe.num_val, recipe.seed, recipe.image_size)
    module = SyntheticCNN(num_classes=len(CLASS_NAMES), width=recipe.width)
    bundle = ModelBundle("synthetic_cnn", module, (recipe.image_size,) * 2, MEAN, STD, list(CLASS_NAMES))
    steps = recipe.epochs * ((recipe.num_train + recipe.batch_size - 1) // recipe.batch_size)
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    progress = tqdm(total=steps, desc="train synthetic_cnn", mininterval=1.0)
    for _epoch in range(recipe.epochs):
        module.train()
        order = torch.randperm(recipe.num_train, generator=generator)
        for start in range(0, recipe.num_train, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            images = train_x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5  # shapes are mirror-symmetric classes
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = F.cross_entropy(module(bundle.normalize(images)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    progress.close()
    module.eval()
    accuracy = evaluate_accuracy(bundle, val_x, val_y)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    torch.save({"state_dict": module.state_dict(), "val_accuracy": accuracy, "recipe": asdict(recipe)}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    print(f"synthetic_cnn: validation accuracy {accuracy:.3f}; weights cached at {path}")
    return accuracy


def main(argv=None) -> int:
    """``python -m salbench.models.training --out FILE [--seed N --epochs N --num-train N]``."""
    from salbench.models.synthetic_cnn import SyntheticTraining

    parser = argparse.ArgumentParser(prog="python -m salbench.models.training",
                                     description="Train the synthetic-shapes CNN and save its weights.")
    parser.add_argument("--out", required=True, type=Path, help="weights file to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=SyntheticTraining.seed)
    parser.add_argument("--epochs", type=int, default=SyntheticTraining.epochs)
    parser.add_argument("--num-train", type=int, default=SyntheticTraining.num_train)
    args = parser.parse_args(argv)
    recipe = SyntheticTraining(seed=args.seed, epochs=args.epochs, num_train=args.num_train)
    accuracy = _train_and_save(recipe, args.out)
    return 0 if accuracy >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
