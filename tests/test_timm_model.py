"""The timm model path for real: bundle facts from timm's pretrained config, weights from a file,
the Hugging Face cache and the torch hub cache (all offline), a fast clear error when weights are
missing, and Grad-CAM and a whole job on a timm network."""
from __future__ import annotations

import time

import pytest
import torch

from salbench.methods import create_method
from salbench.methods.hooks import default_target_layer
from salbench.models import create_model, imagenet_class_names
from salbench.harness.registry import UnknownNameError

timm = pytest.importorskip("timm")

ARCH = "resnet18"  # builds in well under a second on CPU


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches: nothing cached on this machine can be picked up,
    and a test that reached the network would fail on a missing file instead of passing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def seeded():
    """A seeded random resnet18 bundle and a batch of inputs [2, 3, 64, 64]."""
    torch.manual_seed(0)
    bundle = create_model("timm", arch=ARCH, pretrained=False)
    return bundle, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def outputs(bundle, x):
    with torch.no_grad():
        return bundle.module(x)


def test_bundle_facts_come_from_timms_pretrained_config(seeded):
    bundle, x = seeded
    cfg = timm.models.get_pretrained_cfg(ARCH)
    assert bundle.name == "timm.resnet18" and not bundle.module.training
    assert bundle.input_size == cfg.input_size[1:] == (224, 224)
    assert bundle.mean == tuple(cfg.mean) and bundle.std == tuple(cfg.std)
    assert bundle.class_names == imagenet_class_names() and bundle.num_classes == 1000 == bundle.module.num_classes
    assert bundle.target_layer == "layer4" == bundle.module.feature_info[-1]["module"]
    assert bundle.target_layer == default_target_layer(bundle.module, x[:1])
    assert bundle.info == {"pretrained": False, "architecture": ARCH, "pretrained_cfg": "resnet18.a1_in1k",
                           "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation}


def test_tagged_arch_takes_that_tags_config():
    bundle = create_model("timm", arch="resnet18.tv_in1k", pretrained=False)
    assert bundle.info["pretrained_cfg"] == "resnet18.tv_in1k" and bundle.info["crop_pct"] == 0.875
    assert bundle.info["interpolation"] == "bilinear"


@pytest.mark.parametrize("suffix", [pytest.param(".pth", id="state_dict"), pytest.param(".safetensors", id="safetensors")])
def test_weights_file_gives_exactly_the_saved_network(seeded, tmp_path, suffix):
    bundle, x = seeded
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(bundle.module.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(bundle.module.state_dict(), str(path))
    loaded = create_model("timm", arch=ARCH, weights=str(path))
    assert loaded.info["weights"] == str(path) and loaded.info["pretrained"] is True and not loaded.module.training
    assert torch.equal(outputs(loaded, x), outputs(bundle, x))
    assert not torch.equal(outputs(create_model("timm", arch=ARCH, pretrained=False), x), outputs(bundle, x))


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(create_model("timm", arch="resnet34", pretrained=False).module.state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit timm resnet18 with 1000 classes: 96 unexpected key\(s\): layer1\.2\.conv1\.weight"):
        create_model("timm", arch=ARCH, weights=str(path))


def test_missing_weights_fail_fast_and_name_where_the_file_goes(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        create_model("timm", arch=ARCH)
    assert time.perf_counter() - start < 5  # no download attempt (timm's hub retries take ~45 s offline)
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and str(tmp_path / "hf" / "hub") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_a1_0-d63eafa0.pth") in message
    assert "weights=PATH" in message and "pretrained=false" in message
    assert not any((tmp_path / "torch").rglob("*")) and not (tmp_path / "hf").exists()  # nothing written
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("timm", arch=ARCH, weights=str(tmp_path / "nowhere.pth"))


def test_weights_come_from_the_hugging_face_cache(seeded, tmp_path):
    """timm's hub layout: models--timm--<arch>.<tag>/snapshots/<revision>/model.safetensors."""
    from safetensors.torch import save_file

    bundle, x = seeded
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(bundle.module.state_dict(), str(snapshot / "model.safetensors"))
    cached = create_model("timm", arch=ARCH)
    assert cached.info["weights"] == str(snapshot / "model.safetensors")
    assert torch.equal(outputs(cached, x), outputs(bundle, x))


def test_weights_come_from_the_torch_hub_cache(seeded, tmp_path):
    """resnet18.tv_in1k names torchvision's file, so a torchvision hub cache serves timm too."""
    bundle, x = seeded
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(bundle.module.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    cached = create_model("timm", arch="resnet18.tv_in1k")
    assert cached.info["weights"] == str(checkpoints / "resnet18-f37072fd.pth")
    assert torch.equal(outputs(cached, x), outputs(bundle, x))
    assert cached.mean == (0.485, 0.456, 0.406) and cached.info["crop_pct"] == 0.875


def test_unknown_arch_and_tag_are_clear_errors():
    with pytest.raises(UnknownNameError, match="unknown timm model 'resnt18'. Did you mean 'resnet18'"):
        create_model("timm", arch="resnt18", pretrained=False)
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        create_model("timm", arch="resnet18.bogus")


def test_gradcam_on_a_timm_network_matches_a_hand_computed_reference(seeded):
    """Grad-CAM through the bundle's layer equals ReLU(sum_k mean(dy/dA_k) A_k) computed here with
    a forward hook on layer4, upsampled bilinearly; the network is left as it was."""
    bundle, _ = seeded
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))  # layer4: 3 x 3
    target = torch.tensor([3, 7])
    explainer = create_method("gradcam", bundle)
    heatmaps = explainer(x, target)
    assert explainer.options()["layer"] == "layer4"
    assert heatmaps.shape == (2, 96, 96) and heatmaps.dtype == torch.float32

    captured = {}
    handle = bundle.module.layer4.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        scores = bundle.module(x).gather(1, target[:, None]).sum()
    finally:
        handle.remove()
    (gradients,) = torch.autograd.grad(scores, captured["a"])
    reference = (gradients.mean((2, 3), keepdim=True) * captured["a"]).sum(1).detach()
    torch.testing.assert_close(explainer.attribute(x, target), reference, rtol=1e-4, atol=1e-6)
    upsampled = torch.nn.functional.interpolate(reference.clamp_min(0)[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(heatmaps, upsampled, rtol=1e-4, atol=1e-6)
    assert reference.flatten(1).amax(1).gt(0).any()  # not a trivially all-zero comparison
    assert not bundle.module.training and all(p.grad is None for p in bundle.module.parameters())


def test_a_job_runs_on_a_timm_model(tmp_path, compose_config):
    import json

    from salbench.harness.runner import run_job

    cfg = compose_config(["debug=fast", "model=timm", f"model.arch={ARCH}", "model.pretrained=false",
                          "dataset.limit=4", "dataset.image_size=64", "gallery_images=0"])
    scores = run_job(cfg, tmp_path / "job")
    assert set(scores["model"]) == {"timm.resnet18"} and set(scores["method"]) == {"gradcam", "random", "center"}
    per_image = scores[scores["scope"] == "image"]
    assert len(per_image) == 4 * 3 * 4 and per_image["image_id"].nunique() == 4
    assert per_image["value"].dropna().between(0, 1).all()  # NaN: an all-zero map has no box
    described = json.loads((tmp_path / "job" / "run.json").read_text())["model"]
    assert described["name"] == "timm.resnet18" and described["target_layer"] == "layer4"
    assert described["pretrained_cfg"] == "resnet18.a1_in1k" and described["num_classes"] == 1000
