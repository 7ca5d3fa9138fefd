"""Effect of ``autocast`` (bf16 / fp16) on deletion/insertion scores, measured on the trained
synthetic CNN and the synthetic shapes (Grad-CAM maps of the labelled class, RISE preset with
``n_steps`` steps). Prints and returns the mean and max absolute AUC difference to float32.

    python -m benchmarks.autocast_effect [--device cpu|cuda] [--images 32] [--n-steps 56]
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import torch


def measure(device: str = "cpu", images: int = 32, n_steps: int = 56) -> List[Dict[str, float]]:
    from salbench.datasets import collate, create_dataset
    from salbench.methods import create_method
    from salbench.metrics import ExplainedBatch, create_metric
    from salbench.models import create_model

    torch.manual_seed(0)
    bundle = create_model("synthetic_cnn").to(torch.device(device))
    dataset = create_dataset("synthetic", limit=images, image_size=tuple(bundle.input_size))
    batch = collate([dataset[i] for i in range(len(dataset))]).to(torch.device(device))
    inputs = bundle.normalize(batch.images)
    with torch.no_grad():
        logits = bundle.module(inputs)
    heatmaps = create_method("gradcam", bundle)(inputs, batch.labels)
    explained = ExplainedBatch(batch=batch, inputs=inputs, logits=logits, targets=batch.labels,
                               maps={"gradcam": heatmaps}, model=bundle)
    reference = create_metric("rise", n_steps=n_steps).update(explained)["gradcam"]
    rows = []
    cuda = torch.device(device).type == "cuda"
    # torch.autocast refuses bf16 on a GPU without (emulated) bf16 support
    precisions = (["bf16"] if not cuda or torch.cuda.is_bf16_supported() else []) \
        + (["fp16"] if cuda or _cpu_fp16_ok() else [])
    for precision in precisions:
        scores = create_metric("rise", n_steps=n_steps, autocast=precision).update(explained)["gradcam"]
        for score, values in scores.items():
            diff = (values - reference[score]).abs()
            rows.append({"autocast": precision, "score": score, "fp32_mean": float(reference[score].mean()),
                         "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
                         "mean_diff": float((values - reference[score]).mean())})
    return rows


def _cpu_fp16_ok() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))
        return True
    except Exception:  # noqa: BLE001 - older CPUs/builds lack fp16 autocast kernels
        return False


def markdown(rows: List[Dict[str, float]], device: str, images: int, n_steps: int) -> str:
    lines = [f"Trained synthetic CNN, {images} synthetic images, Grad-CAM maps, RISE preset with {n_steps} steps, "
             f"device {device}:", "", "| autocast | score | float32 mean | mean abs diff | max abs diff | mean diff |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['autocast']} | {r['score']} | {r['fp32_mean']:.4f} | {r['mean_abs_diff']:.2e} | "
                     f"{r['max_abs_diff']:.2e} | {r['mean_diff']:+.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--n-steps", type=int, default=56)
    args = parser.parse_args()
    print(markdown(measure(args.device, args.images, args.n_steps), args.device, args.images, args.n_steps))


if __name__ == "__main__":
    main()
