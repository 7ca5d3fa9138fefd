import torch

from salbench.datasets import collate, create_dataset
from salbench.models.training import evaluate_accuracy


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


def test_concurrent_jobs_train_the_synthetic_cnn_once(tmp_path):
    """Two processes asking for the same untrained recipe at once: one trains, the other waits
    for the lock and loads the saved weights (the weights are identical)."""
    import os
    import subprocess
    import sys

    script = ("import torch; from salbench.models import create_model; "
              "b = create_model('synthetic_cnn', epochs=1, num_train=64); "
              "print('sum', float(sum(p.double().sum() for p in b.module.state_dict().values())))")
    env = {**os.environ, "SALBENCH_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert sum(out.count("validation accuracy") for out in outputs) == 1, outputs
    sums = {line for out in outputs for line in out.splitlines() if line.startswith("sum")}
    assert len(sums) == 1, outputs
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
