"""Saved maps: ``save_maps`` writes every method's maps as ``maps/<method>/<image_id>.npy``
(wsolevaluation's layout) resumably; ``method=precomputed`` scores them (and a wsolevaluation
``scoremap_root``) with exactly the scores of the job that saved them; ``salbench rescore`` adds
metrics to a finished run without explaining again; metrics that re-run the explainers refuse
saved maps."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from salbench.harness.maps import map_relative_path, read_classes
from salbench.harness.rescore import rescore
from salbench.harness.runner import run_job
from salbench.methods import create_method
from salbench.methods.base import Explainer

COMMON = ["debug=fast", "dataset.limit=5", "gallery_images=0", "batch_size=3", "forward_chunk=3"]
METRICS = ["metric=[cam_paper,rise,pointing_game]", "metric.rise.n_steps=4", "metric.rise.target=explained"]
KEY = ["method", "metric", "score", "image_index", "target"]


def sorted_rows(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, synthetic_bundle):
    """A job that saved float32 maps of Grad-CAM and saliency (scores: cam_paper, rise, pointing game)."""
    from hydra import compose, initialize_config_dir

    from salbench.harness.cli import config_dir
    from salbench.harness.schema import register_schemas

    register_schemas()
    out = tmp_path_factory.mktemp("saved") / "run"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*COMMON, *METRICS, "method=[gradcam,saliency]",
                                                        "save_maps=float32"])
    return out, run_job(cfg, out)


def test_maps_are_saved_in_wsolevaluations_layout(saved):
    out, scores = saved
    ids = sorted(set(scores["image_id"].dropna()))
    assert len(ids) == 5
    for method in ("gradcam", "saliency"):
        files = sorted(p.relative_to(out / "maps" / method).as_posix() for p in (out / "maps" / method).rglob("*.npy"))
        assert files == [f"{i}.npy" for i in ids]
        array = np.load(out / "maps" / method / f"{ids[0]}.npy")
        assert array.dtype == np.float32 and array.shape == (64, 64)
    labels = scores.drop_duplicates("image_id").set_index("image_id")["target"].dropna()
    assert read_classes(out / "maps" / "classes.txt") == {i: int(labels[i]) for i in ids}
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["save_maps"] == "float32" and info["maps"]["dtype"] == "float32"
    assert info["maps"]["methods"] == {"gradcam": "maps/gradcam", "saliency": "maps/saliency"}


def test_precomputed_float32_maps_give_exactly_the_saving_jobs_scores(saved, compose_config, tmp_path):
    """The saved maps, read back under the same method names (labels), score exactly as the
    maps the job computed: every per-image and dataset-level value is equal."""
    out, original = saved
    cfg = compose_config([*COMMON, *METRICS, "method=[precomputed]", f"method.precomputed.root={out}",
                          "method.precomputed.saved_method=gradcam", "method.precomputed.label=gradcam",
                          f"+method.sal={{name: precomputed, root: '{out}', saved_method: saliency, label: saliency}}"])
    again = run_job(cfg, tmp_path / "again")
    assert set(again["method"]) == {"gradcam", "saliency"}
    columns = ["image_id", "method", "metric", "score", "value", "target", "label", "predicted", "flag", "preset",
               "protocol"]
    pd.testing.assert_frame_equal(sorted_rows(again)[columns], sorted_rows(original)[columns])
    options = json.loads(again.loc[again["method"] == "gradcam", "method_options"].iloc[0])
    assert options["method"] == "precomputed" and options["saved_method"] == "gradcam"


def test_float16_maps_and_image_ids_with_sub_folders(compose_config, tmp_path):
    out = tmp_path / "half"
    run_job(compose_config([*COMMON, "method=[gradcam]", "metric=[cam_paper]", "save_maps=float16",
                            "dataset.limit=2"]), out)
    saved = sorted((out / "maps" / "gradcam").glob("*.npy"))
    assert len(saved) == 2 and np.load(saved[0]).dtype == np.float16
    assert map_relative_path("val/n01440764/ILSVRC2012_val_00000293.JPEG").as_posix() == \
        "val/n01440764/ILSVRC2012_val_00000293.JPEG.npy"
    assert map_relative_path("/abs/x.png").as_posix() == "abs/x.png.npy"
    with pytest.raises(ValueError, match="cannot name a file under a maps folder"):
        map_relative_path("../escape.png")


def test_a_wsolevaluation_scoremap_root_is_read_by_image_id(tmp_path, synthetic_bundle):
    """wsolevaluation's scoremaps: ``<scoremap_root>/<image_id>.npy``, ids with sub-folders, maps
    of any size (resized to the input by the named upsampling), classes from class_labels.txt."""
    root = tmp_path / "scoremaps"
    ids = ["val/n01/a.JPEG", "val/n02/b.JPEG"]
    generator = np.random.default_rng(0)
    maps = [generator.random((7, 9)).astype(np.float32), generator.random((7, 9)).astype(np.float32)]
    for image_id, array in zip(ids, maps):
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / f"{image_id}.npy", array)
    (tmp_path / "class_labels.txt").write_text("val/n01/a.JPEG,1\nval/n02/b.JPEG,4\n")
    explainer = create_method("precomputed", synthetic_bundle, root=str(root), classes=str(tmp_path / "class_labels.txt"))
    x, target = torch.zeros(2, 3, 64, 64), torch.tensor([1, 4])
    torch.testing.assert_close(explainer.attribute(x, target, image_ids=ids), torch.from_numpy(np.stack(maps)),
                               rtol=0, atol=0)
    expected = torch.nn.functional.interpolate(torch.from_numpy(np.stack(maps))[:, None], size=(64, 64),
                                               mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(explainer(x, target, image_ids=ids), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"the saved map of 'val/n02/b.JPEG' explains class 4, but class 2 was asked"):
        explainer(x, torch.tensor([1, 2]), image_ids=ids)
    missing = [f"val/n03/c{i}.JPEG" for i in range(7)]
    with pytest.raises(FileNotFoundError, match=r"7 of the 8 maps asked for are missing in .*scoremaps: "
                                                r"'val/n03/c0.JPEG', .*'val/n03/c4.JPEG', \.\.\. \(expected .*c0\.JPEG\.npy; "
                                                r"it holds 2 maps, e\.g\. val/n01/a\.JPEG\.npy\)"):
        explainer(torch.zeros(8, 3, 64, 64), torch.ones(8, dtype=torch.long), image_ids=[ids[0], *missing])
    with pytest.raises(ValueError, match="no classes.txt beside the maps"):
        create_method("precomputed", synthetic_bundle, root=str(root))
    with pytest.raises(ValueError, match="looks its maps up by image id"):
        explainer(x, target)


def test_metrics_that_re_run_the_explainers_refuse_saved_maps(saved, compose_config, tmp_path):
    out, _ = saved
    cfg = compose_config([*COMMON, "method=[precomputed]", f"method.precomputed.root={out}",
                          "method.precomputed.saved_method=gradcam", "metric=[sensitivity]"])
    with pytest.raises(ValueError, match=r"metric 'sensitivity' re-runs the explainers .* method\(s\) 'precomputed' "
                                         "read saved maps, which cannot be recomputed"):
        run_job(cfg, tmp_path / "refused")


def test_maps_of_a_killed_job_are_on_disk_and_the_resumed_job_completes_them(compose_config, tmp_path, monkeypatch):
    from salbench.metrics.localization import CamPaperLocalization

    common = [*COMMON, "method=[gradcam]", "metric=[cam_paper]", "save_maps=float32", "flush_every=3",
              "dataset.limit=8"]
    original, calls = CamPaperLocalization.update, {"n": 0}

    def failing(self, explained):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return original(self, explained)

    monkeypatch.setattr(CamPaperLocalization, "update", failing)
    out = tmp_path / "job"
    with pytest.raises(RuntimeError, match="killed"):
        run_job(compose_config(common), out)
    assert len(list((out / "maps" / "gradcam").glob("*.npy"))) == 6  # the flushed batch and the one that failed
    assert len(read_classes(out / "maps" / "classes.txt")) == 3  # written with the flush
    monkeypatch.setattr(CamPaperLocalization, "update", original)
    run_job(compose_config(common), out)
    assert len(list((out / "maps" / "gradcam").glob("*.npy"))) == 8 and len(read_classes(out / "maps" / "classes.txt")) == 8
    assert not list((out / "maps").rglob(".*.tmp"))


def test_rescore_adds_a_metric_without_explaining_again(compose_config, tmp_path, monkeypatch):
    """``salbench rescore RUN metric=[rise]`` on a cam_paper run: zero explainer calls, and the
    rise rows equal those of a job that ran rise from the start; report-ready run.json."""
    from salbench.harness.rescore import main as rescore_main
    from salbench.reports.load import load

    base = [*COMMON, "method=[gradcam,saliency]"]
    run = tmp_path / "run"
    run_job(compose_config([*base, "metric=[cam_paper]", "save_maps=float32"]), run)
    reference = run_job(compose_config([*base, "metric=[cam_paper,rise]", "metric.rise.n_steps=4",
                                        "metric.rise.target=explained"]), tmp_path / "reference")
    calls = []
    original_call = Explainer.__call__

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(Explainer, "__call__", counted)
    monkeypatch.setattr("salbench.methods.shared.shared_pass", lambda *a, **k: calls.append("shared_pass"))
    assert rescore_main([str(run), "metric=[rise]", "metric.rise.n_steps=4", "metric.rise.target=explained"]) == 0
    assert calls and set(calls) == {"precomputed"}  # maps read back; no explainer ran, no shared pass
    merged = pd.read_parquet(run / "scores.parquet")
    rise = merged[merged["metric"] == "rise"]
    pd.testing.assert_frame_equal(sorted_rows(rise), sorted_rows(reference[reference["metric"] == "rise"]))
    info = json.loads((run / "run.json").read_text())
    assert "rise" in info["components"]["metrics"] and info["rescored"][0]["metrics"]["rise"]["n_steps"] == 4
    assert "curves" in info["tables"] and set(pd.read_parquet(run / "curves.parquet")["metric"]) == {"rise"}
    assert not (run / ".rescore").exists() and "rise/deletion_auc" in (run / "summary.md").read_text()
    assert set(load(run)["metric"]) == {"cam_paper", "rise"}  # the report reads the run with the new metric
    with pytest.raises(ValueError, match="already has metric"):
        rescore(run, ["metric=[rise]"])
    with pytest.raises(ValueError, match="metric 'randomization' re-runs the explainers"):
        rescore(run, ["metric=[randomization]"])
    with pytest.raises(ValueError, match="cannot change model.pretrained=false"):
        rescore(run, ["metric=[road]", "model.pretrained=false"])
    monkeypatch.undo()
    plain = tmp_path / "plain"
    run_job(compose_config([*base, "metric=[cam_paper]", "dataset.limit=2"]), plain)
    with pytest.raises(ValueError, match="has no saved maps; run the job with save_maps=float32"):
        rescore(plain, ["metric=[rise]"])


def test_a_metric_asking_for_another_class_than_the_saved_maps_is_a_clear_error(compose_config, tmp_path):
    """An untrained CNN mispredicts: RISE's predicted-class maps are not the saved label maps."""
    run = tmp_path / "run"
    run_job(compose_config([*COMMON, "model.pretrained=false", "method=[gradcam]", "metric=[cam_paper]",
                            "save_maps=float32"]), run)
    with pytest.raises(ValueError, match=r"explains class \d, but class \d was asked for .*\(metric\.<name>\.target=explained\)"):
        rescore(run, ["metric=[rise]", "metric.rise.n_steps=4"])
    from salbench.reports.load import load

    assert (run / ".rescore" / "run.json").exists()  # the failed rescore's work, hidden from reports
    assert set(load(run)["metric"]) == {"cam_paper"}
