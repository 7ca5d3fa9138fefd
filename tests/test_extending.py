"""docs/extending.md as written: its code blocks register a method, a metric needing every
present class's maps, a perturbation metric on the shared engine, a model and a dataset, each
in one module and one YAML and nothing else; jobs run them and the scores equal independent
references."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from salbench.datasets import DATASETS
from salbench.harness.runner import run_job
from salbench.methods import METHODS
from salbench.metrics import METRICS
from salbench.models import MODELS

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
NAMES = {METHODS: ["edge_detector", "gradient_times_input"], METRICS: ["class_energy", "keep_top"], MODELS: ["tiny_gap"],
         DATASETS: ["squares"]}


def blocks(language: str):
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def documented():
    """Run the document's Python blocks in one namespace (registering the examples) and parse
    its YAML blocks; the registrations are removed afterwards."""
    namespace: dict = {"torch": torch}
    for code in blocks("python"):
        exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the project's own document
    configs = {}
    for text in blocks("yaml"):
        node = yaml.safe_load(text)
        configs[node.get("name") or next(iter(node))] = node
    yield namespace, configs
    for registry, names in NAMES.items():
        for name in names:
            registry._entries.pop(name, None)


def job_config(compose_config, configs, model, dataset, methods, metrics, extra=()):
    cfg = compose_config(["debug=fast", "gallery_images=0", *extra])
    with open_dict(cfg):
        cfg.model = OmegaConf.create(configs[model]) if model in configs else cfg.model
        cfg.dataset = OmegaConf.create(configs[dataset]) if dataset in configs else cfg.dataset
        cfg.method = {m: configs[m][m] if m in configs else {"name": m} for m in methods}
        cfg.metric = {m: configs[m][m] if m in configs else {"name": m} for m in metrics}
    return cfg


def test_each_example_is_one_module_and_one_yaml(documented):
    _, configs = documented
    assert set(configs) == {"edge_detector", "class_energy", "keep_top", "tiny_gap", "squares"}
    for registry, names in NAMES.items():
        assert set(names) <= set(registry.names())


def test_a_job_runs_the_new_model_dataset_method_and_metrics(documented, compose_config, tmp_path):
    namespace, configs = documented
    cfg = job_config(compose_config, configs, "tiny_gap", "squares", ["edge_detector", "gradcam"],
                     ["cam_paper", "keep_top", "class_energy"], extra=["dataset.limit=null"])
    scores = run_job(cfg, tmp_path / "job")
    per_image = scores[scores["scope"] == "image"]
    assert set(per_image["method"]) == {"edge_detector", "gradcam"} and len(set(per_image["image_id"])) == 16
    assert set(scores["model"]) == {"tiny_gap"} and set(scores["dataset"]) == {"squares"}
    assert set(per_image.loc[per_image["metric"] == "keep_top", "preset"]) == {"keep_top"}

    # references: the edge map, and keep_top by a plain loop over methods and images
    dataset = DATASETS.create("squares", num_images=16)
    bundle = MODELS.create("tiny_gap")
    images = torch.stack([dataset[i]["image"] for i in range(16)])
    x = bundle.normalize(images)
    from scipy import ndimage

    for method, explainer in (("edge_detector", METHODS.create("edge_detector", bundle.module)),
                              ("gradcam", METHODS.create("gradcam", bundle.module, layer="1"))):
        with torch.no_grad():
            logits = bundle.module(x)
        maps = explainer(x, logits.argmax(1))
        if method == "edge_detector":  # Sobel magnitude per channel, summed; compare the interior
            reference = np.zeros(maps.shape)
            for b, image in enumerate(x.numpy().astype(np.float64)):
                for channel in image:
                    reference[b] += np.hypot(ndimage.sobel(channel, axis=1, mode="constant"),
                                             ndimage.sobel(channel, axis=0, mode="constant"))
            smoothed = np.stack([ndimage.uniform_filter(r, 3, mode="constant") for r in reference])
            np.testing.assert_allclose(maps.numpy()[:, 2:-2, 2:-2], smoothed[:, 2:-2, 2:-2], rtol=1e-5, atol=1e-5)
        keep = round(0.2 * 32 * 32)
        expected = []
        for b in range(16):
            order = torch.argsort(maps[b].flatten(), descending=True, stable=True)[:keep]
            mask = torch.zeros(32 * 32, dtype=torch.bool)
            mask[order] = True
            masked = torch.where(mask.view(1, 32, 32), x[b], torch.zeros(()))
            with torch.no_grad():
                expected.append(bundle.module(masked[None]).softmax(1)[0, logits[b].argmax()].item())
        got = per_image[(per_image["method"] == method) & (per_image["metric"] == "keep_top")]
        np.testing.assert_allclose(got.sort_values("image_index")["value"], expected, rtol=1e-5, atol=1e-6)


def test_the_present_class_metric_gets_one_row_per_class_of_a_multi_label_image(documented, compose_config,
                                                                               tmp_path, synthetic_bundle):
    """On 2x2 grids of four classes, class_energy gets four rows per image, each the map of that
    class: the same rows a loop over (image, class) computes with Grad-CAM."""
    from salbench.datasets import create_dataset
    from salbench.methods import create_method
    from salbench.metrics.pointing import boxes_to_mask, energy_pointing

    _, configs = documented
    overrides = ["dataset=grid", "dataset.source=synthetic", "+dataset.source_options.num_images=40",
                 "dataset.per_cell=false", "dataset.num_grids=2", "dataset.threshold=0.3", "dataset.limit=null"]
    cfg = job_config(compose_config, configs, "synthetic_cnn", "grid", ["gradcam"], ["class_energy"], overrides)
    scores = run_job(cfg, tmp_path / "grid")
    rows = scores[scores["score"] == "class_energy"]
    assert len(rows) == 2 * 4 and (rows["target_rule"] == "present").all()
    dataset = create_dataset("grid", model=synthetic_bundle, image_size=(64, 64), source="synthetic",
                             source_options={"num_images": 40}, per_cell=False, num_grids=2, threshold=0.3)
    gradcam = create_method("gradcam", synthetic_bundle)
    for _, row in rows.iterrows():
        sample = dataset[int(row["image_index"])]
        cls = int(row["target"])
        heatmap = gradcam(synthetic_bundle.normalize(sample["image"][None]), torch.tensor([cls]))
        mask = boxes_to_mask(sample["boxes"][sample["box_labels"] == cls], (64, 64))
        assert row["value"] == pytest.approx(energy_pointing(heatmap, mask[None]).item(), abs=1e-6)
