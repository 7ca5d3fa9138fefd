import torch

from salbench.datasets import collate, create_dataset
from salbench.training import evaluate_accuracy


def test_trained_cnn_reaches_95_percent_on_held_out_images(synthetic_bundle):
    # the test split is never seen in training (train/val/test use separate seed streams)
    dataset = create_dataset("synthetic", num_images=400, split="test", seed=0)
    batch = collate([dataset[i] for i in range(len(dataset))])
    accuracy = evaluate_accuracy(synthetic_bundle, batch.images, batch.labels)
    assert accuracy >= 0.95, accuracy
    assert synthetic_bundle.info["val_accuracy"] >= 0.95


def test_bundle_carries_what_a_job_needs(synthetic_bundle):
    assert synthetic_bundle.input_size == (64, 64) and synthetic_bundle.num_classes == 5
    assert synthetic_bundle.target_layer == "features" and not synthetic_bundle.module.training
    x = torch.rand(2, 3, 64, 64)
    assert synthetic_bundle.module(synthetic_bundle.normalize(x)).shape == (2, 5)
