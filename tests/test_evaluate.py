"""The notebook API: ``salbench.evaluate`` runs the job loop on images in memory and returns the
rows a job writes; the README's snippet runs as written; ``dataset=imagefolder`` reads
torchvision's class-subfolder layout with explicit label matching and refuses the metrics that
need boxes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import salbench
from salbench.datasets import create_dataset
from salbench.harness.runner import run_job
from salbench.harness.store import SCORE_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_snippet_runs_as_written(synthetic_bundle, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Evaluate your own method"):]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    scores = namespace["scores"]
    assert list(scores.columns) == SCORE_COLUMNS and set(scores["method"]) == {"mine", "gradcam"}
    assert set(scores["metric"]) == {"cam_paper", "pointing_game"} and scores["image_id"].nunique() == 16
    assert "gt_known_loc" in capsys.readouterr().out


def test_evaluate_gives_the_rows_of_a_job_on_the_same_images(compose_config, tmp_path):
    """The same images, model, methods and metrics through run_job and through evaluate: equal
    rows. An untrained CNN mispredicts, so maps of the label (cam_paper, complexity under
    target=label) and of the prediction (RISE) both differ from the other class's."""
    overrides = ["debug=fast", "dataset.limit=6", "model.pretrained=false", "method=[gradcam,saliency]",
                 "metric=[cam_paper,complexity,rise]", "metric.rise.n_steps=4", "gallery_images=0"]
    job = run_job(compose_config(overrides), tmp_path / "job")
    assert (job["label"] != job["predicted"]).any()
    torch.manual_seed(0)  # the job's seed before it builds the model: the same random weights
    bundle = salbench.create_model("synthetic_cnn", pretrained=False)
    dataset = create_dataset("synthetic", num_images=200, image_size=64, limit=6)
    samples = [dataset[i] for i in range(6)]
    scores, tables = salbench.evaluate(
        bundle, torch.stack([s["image"] for s in samples]), torch.tensor([s["label"] for s in samples]),
        boxes=[s["boxes"] for s in samples], methods=["gradcam", "saliency"],
        metrics=["cam_paper", "complexity", {"name": "rise", "n_steps": 4}], image_ids=[s["image_id"] for s in samples],
        batch_size=4, forward_chunk=4, dataset_name="synthetic", return_tables=True)
    key = ["method", "metric", "score", "image_id", "target"]
    columns = [c for c in SCORE_COLUMNS if c not in ("image_index",)]
    pd.testing.assert_frame_equal(scores.sort_values(key).reset_index(drop=True)[columns],
                                  job.sort_values(key).reset_index(drop=True)[columns])
    curves = pd.read_parquet(tmp_path / "job" / "curves.parquet")
    assert len(tables["curves"]) == len(curves) and set(tables["curves"]["method"]) == {"gradcam", "saliency"}
    predicted = salbench.evaluate(bundle, torch.stack([s["image"] for s in samples]),
                                  torch.tensor([s["label"] for s in samples]), methods=["gradcam"],
                                  metrics=["complexity"], target="predicted", forward_chunk=4)
    assert (predicted["target"] == predicted["predicted"]).all() and (predicted["target_rule"] == "predicted").all()


def test_evaluate_takes_callables_explainers_and_a_plain_module():
    """A plain nn.Module (images as its input), a callable and an Explainer object; without
    boxes the localization metrics are refused; the caller's random state is left alone."""
    from salbench.methods import create_method

    from helpers import small_cnn

    model = small_cnn()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    saliency = create_method("saliency", model)
    calls = []

    def brightness(x, target):
        calls.append(len(x))
        return x.mean(1)

    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    scores = salbench.evaluate(model, images, labels, methods={"bright": brightness, "sal": saliency},
                               metrics=["complexity", {"name": "rise", "n_steps": 4}], batch_size=4, forward_chunk=2)
    assert torch.equal(torch.rand(1), expected_draw)
    assert set(scores["method"]) == {"bright", "sal"} and set(calls) == {2}  # chunks of forward_chunk, padded
    sparseness = scores[(scores["method"] == "bright") & (scores["score"] == "sparseness")].sort_values("image_index")
    from salbench.metrics import create_metric

    reference = create_metric("complexity")  # the metric on the callable's maps, directly
    from helpers import model_explained

    direct = reference.update(model_explained(model, images, images.mean(1)))["m"]["sparseness"]
    np.testing.assert_allclose(sparseness["value"].to_numpy(), direct.numpy(), rtol=1e-6)
    options = json.loads(scores.loc[scores["method"] == "bright", "method_options"].iloc[0])
    assert options["function"].endswith("brightness") and options["method"] == "bright"
    with pytest.raises(ValueError, match="metric 'cam_paper' scores maps against ground-truth boxes or masks, and "
                                         "dataset 'in_memory' has none; metrics that need none: complexity"):
        salbench.evaluate(model, images, labels, methods=["saliency"], metrics=["cam_paper"])


def write_images(root: Path, classes, per_class: int = 2) -> None:
    generator = np.random.default_rng(0)
    for name in classes:
        (root / name / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            where = root / name / ("sub" if i else "") / f"{i}.png"
            Image.fromarray((generator.random((20, 24, 3)) * 255).astype(np.uint8)).save(where)
    (root / classes[0] / "notes.txt").write_text("not an image")


def test_imagefolder_labels_by_folder_name_sorted_order_or_class_index(tmp_path, synthetic_bundle):
    """Folder names matched to the model's classes; torchvision's sorted numbering; an
    ImageNet-style class index; a text class index; unmatched folders are a clear error."""
    root = tmp_path / "images"
    write_images(root, ["square", "disk", "ring"])
    matched = create_dataset("imagefolder", root=str(root), model=synthetic_bundle)
    assert [matched.image_id(i) for i in range(len(matched))] == [
        "disk/0.png", "disk/sub/1.png", "ring/0.png", "ring/sub/1.png", "square/0.png", "square/sub/1.png"]
    assert [matched[i]["label"] for i in range(len(matched))] == [0, 0, 4, 4, 1, 1]  # disk, ring, square
    assert matched[0]["image"].shape == (3, 224, 224) and len(matched[0]["boxes"]) == 0
    assert matched.annotations == () and matched.class_names == synthetic_bundle.class_names
    in_order = create_dataset("imagefolder", root=str(root), labels="sorted")
    assert [in_order[i]["label"] for i in (0, 2, 4)] == [0, 1, 2] and in_order.class_names == ["disk", "ring", "square"]
    (tmp_path / "index.json").write_text(json.dumps({"0": ["square", "Square"], "1": ["disk", "Disk"],
                                                     "2": ["ring", "Ring"]}))
    indexed = create_dataset("imagefolder", root=str(root), class_index=str(tmp_path / "index.json"))
    assert [indexed[i]["label"] for i in (0, 2, 4)] == [1, 2, 0]
    (tmp_path / "index.txt").write_text("square,plus\ndisk,triangle\nring,3\n")
    named = create_dataset("imagefolder", root=str(root), class_index=str(tmp_path / "index.txt"), model=synthetic_bundle)
    assert [named[i]["label"] for i in (0, 2, 4)] == [2, 3, 3]
    (root / "oval").mkdir()
    with pytest.raises(ValueError, match=r"1 folder\(s\) of .* match no class through the folder names: 'oval'; valid: "
                                         r"the model's class names \(disk, square, triangle, plus, ring\)"):
        create_dataset("imagefolder", root=str(root), model=synthetic_bundle)
    with pytest.raises(ValueError, match=r"1 folder\(s\) are not in .*index.txt: 'oval'"):
        create_dataset("imagefolder", root=str(root), class_index=str(tmp_path / "index.txt"))
    with pytest.raises(ValueError, match="labels=sorted numbers the 4 folders 0..3, but the model has 5 classes"):
        create_dataset("imagefolder", root=str(root), labels="sorted", model=synthetic_bundle)


def test_an_imagefolder_job_scores_faithfulness_and_refuses_localization(tmp_path, compose_config, synthetic_bundle):
    root = tmp_path / "images"
    write_images(root, ["disk", "plus"], per_class=2)
    common = ["dataset=imagefolder", f"dataset.root={root}", "method=[gradcam]", "progress=false", "gallery_images=0"]
    scores = run_job(compose_config([*common, "metric=[rise,complexity]", "metric.rise.n_steps=4"]), tmp_path / "job")
    assert scores["image_id"].dropna().nunique() == 4 and set(scores["metric"]) == {"rise", "complexity"}
    assert set(scores.drop_duplicates("image_id")["label"].dropna()) == {0, 3}
    with pytest.raises(ValueError, match="metric 'cam_paper' scores maps against ground-truth boxes or masks, and "
                                         "dataset 'imagefolder' has none"):
        run_job(compose_config([*common, "metric=[cam_paper]"]), tmp_path / "refused")
