import numpy as np
import pytest
import torch

from salbench.datasets import collate, create_dataset
from salbench.datasets.synthetic import CLASS_NAMES, render_sample


def test_same_seed_same_images_and_other_seed_differs():
    a = create_dataset("synthetic", num_images=6, seed=3)
    b = create_dataset("synthetic", num_images=6, seed=3)
    c = create_dataset("synthetic", num_images=6, seed=4)
    for i in range(6):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["label"] == b[i]["label"]
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_box_is_the_tight_box_of_the_mask_and_the_mask_is_the_drawn_object():
    dataset = create_dataset("synthetic", num_images=40, seed=1)
    for i in range(len(dataset)):
        sample = dataset[i]
        mask, (x0, y0, x1, y1) = sample["mask"], sample["boxes"][0].tolist()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert (cols.min(), rows.min(), cols.max(), rows.max()) == (x0, y0, x1, y1)
        assert mask.sum() > 20  # a visible object
        # the object was painted last: its pixels hold one colour (+ small noise), unlike the clutter
        pixels = sample["image"][:, mask]
        assert float(pixels.std(dim=1).max()) < 0.06


def test_class_balance_and_shape_masks_differ_by_class():
    labels = [render_sample(0, 2, i)[1] for i in range(300)]
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert counts.min() > 30  # all five classes drawn, roughly uniformly
    # the ring has a hole: its mask misses the centre; the disk's does not
    for index in range(300):
        image, label, mask = render_sample(0, 2, index)
        if label in (0, 4):
            ys, xs = np.nonzero(mask)
            centre = mask[int(round(ys.mean())), int(round(xs.mean()))]
            assert centre == (label == 0)


def test_shards_partition_the_dataset_and_limit_applies_first():
    full = create_dataset("synthetic", num_images=10, limit=7)
    shards = [create_dataset("synthetic", num_images=10, limit=7, shard=s, num_shards=3) for s in range(3)]
    ids = sorted(x["image_id"] for shard in shards for x in (shard[i] for i in range(len(shard))))
    assert ids == sorted(full[i]["image_id"] for i in range(len(full))) and len(ids) == 7


def test_collate_and_bad_options():
    dataset = create_dataset("synthetic", num_images=3, image_size=32)
    batch = collate([dataset[i] for i in range(3)])
    assert batch.images.shape == (3, 3, 32, 32) and batch.masks.shape == (3, 32, 32)
    assert batch.indices.tolist() == [0, 1, 2] and len(batch.boxes) == 3
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        create_dataset("synthetic", split="tset")
    with pytest.raises(ValueError, match="shard"):
        create_dataset("synthetic", shard=3, num_shards=2)
