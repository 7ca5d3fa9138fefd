"""Any model: a fine-tuned torchvision checkpoint of any class count (checkpoint dicts,
DataParallel prefixes, safetensors), clear errors on mismatches, timm with num_classes, any
architecture through ``model=module``, and pretrained weights fetched by the libraries' own
downloads when online (the download monkeypatched: no network in tests), a clear error offline."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salbench.harness.runner import run_job
from salbench.harness.schema import options_of
from salbench.models import create_model
from salbench.models.weights import WeightsMismatchError, load_weights, state_dict_of

from helpers import small_cnn


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A resnet18 with a 5-class head (seeded), saved as a training checkpoint of a
    DataParallel model: {"epoch": 3, "state_dict": {"module.conv1.weight": ...}}."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    with torch.no_grad():  # BN statistics that are not the init's
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "finetuned.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model, path


def folder_of_images(root: Path, classes, per_class: int = 1, size: int = 40) -> Path:
    generator = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (generator.random((size, size + 6, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.png")
    return root


def test_a_finetuned_torchvision_checkpoint_is_the_in_memory_model(finetuned, compose_config, tmp_path):
    """model=torchvision model.arch=resnet18 model.num_classes=5 model.weights=FILE: the job's
    model gives the in-memory model's logits exactly; the job runs (labels from folder names
    0..4) and records the file's sha256; num_classes=10 with the same file is a clear error."""
    model, path = finetuned
    overrides = ["model=torchvision", "model.arch=resnet18", "model.num_classes=5", f"model.weights={path}"]
    cfg = compose_config(overrides)
    bundle = create_model(cfg.model.name, **options_of(cfg.model))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(bundle.module(x), model(x))
    assert bundle.class_names == ["0", "1", "2", "3", "4"] and bundle.info["num_classes"] == 5
    root = folder_of_images(tmp_path / "images", ["0", "1", "2", "3", "4"])
    job = compose_config([*overrides, "dataset=imagefolder", f"dataset.root={root}", "method=[gradcam]",
                          "metric=[complexity]", "batch_size=5", "forward_chunk=5", "progress=false",
                          "gallery_images=0"])
    scores = run_job(job, tmp_path / "job")
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(root / c / "img0.png").convert("RGB").resize(
        (224, 224), Image.BILINEAR), dtype=np.float32) / 255.0).permute(2, 0, 1) for c in "01234"])
    with torch.no_grad():
        predicted = model(bundle.normalize(images)).argmax(1).tolist()
    rows = scores[scores["scope"] == "image"].drop_duplicates("image_id").sort_values("image_id")
    assert rows["label"].tolist() == [0, 1, 2, 3, 4] and rows["predicted"].tolist() == predicted
    import hashlib

    info = json.loads((tmp_path / "job" / "run.json").read_text())
    assert info["inputs"]["model"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsMismatchError, match=r"2 shape mismatch\(es\): fc\.weight: checkpoint \[5, 512\], model "
                                                   r"\[10, 512\]; fc\.bias: checkpoint \[5\], model \[10\]; "
                                                   r"set model\.num_classes=5"):
        create_model("torchvision", arch="resnet18", num_classes=10, weights=str(path))
    with pytest.raises(ValueError, match="weights have 1000 classes; with num_classes=5 give your checkpoint"):
        create_model("torchvision", arch="resnet18", num_classes=5)


def test_every_checkpoint_layout_loads_and_a_wrong_one_is_explained(tmp_path):
    model = small_cnn()
    state = model.state_dict()
    layouts = {
        "plain.pt": state,
        "model.pt": {"model": state, "optimizer": {"lr": 0.1}},
        "model_state_dict.pt": {"epoch": 1, "model_state_dict": state},
        "net.pt": {"net": {f"_orig_mod.{k}": v for k, v in state.items()}},  # torch.compile's prefix
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "nested.pt": {"ema": {"weights": state}, "state_dict": {"x": torch.zeros(1)}},
    }
    for name, stored in layouts.items():
        torch.save(stored, tmp_path / name)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "weights.safetensors"))
    for name in [*layouts, "weights.safetensors"]:
        fresh = small_cnn(num_classes=5)
        torch.nn.init.zeros_(fresh[0].weight)
        load_weights(fresh, tmp_path / name, state_dict_key="ema.weights" if name == "nested.pt" else None)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items()), name
    with pytest.raises(ValueError, match=r"holds no state dict .* its top-level keys: epoch, notes; name the right one "
                                         r"with model\.state_dict_key=KEY"):
        state_dict_of({"epoch": 1, "notes": "x"}, Path("ckpt.pt"))
    with pytest.raises(ValueError, match="has no 'ema.model' \\(state_dict_key\\); its top-level keys: weights"):
        load_weights(small_cnn(), tmp_path / "nested.pt", state_dict_key="ema.model")
    torch.save({"state_dict": state, "args": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match=r"cannot read weights .*pickled\.pt with torch\.load\(weights_only=True\)"):
        load_weights(small_cnn(), tmp_path / "pickled.pt")
    partial = {k: v for k, v in state.items() if not k.startswith("11.")}
    torch.save({**partial, "extra.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(WeightsMismatchError, match=r"2 missing key\(s\): 11\.weight, 11\.bias\. 1 unexpected key\(s\): "
                                                   r"extra\.weight"):
        load_weights(small_cnn(), tmp_path / "partial.pt")


def test_timm_takes_num_classes_and_a_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "t.pth")
    bundle = create_model("timm", arch="resnet18", num_classes=3, weights=str(tmp_path / "t.pth"),
                          class_names=["cat", "dog", "owl"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bundle.module(x), model(x))
    assert bundle.class_names == ["cat", "dog", "owl"] and bundle.num_classes == 3
    with pytest.raises(WeightsMismatchError, match=r"fc\.weight: checkpoint \[3, 512\], model \[7, 512\].*"
                                                   r"set model\.num_classes=3"):
        create_model("timm", arch="resnet18", num_classes=7, weights=str(tmp_path / "t.pth"))
    assert create_model("timm", arch="resnet18", pretrained=False, num_classes=4).num_classes == 4


def build_small_cnn(num_classes: int = 5):
    """The model factory of the next test (any callable returning an nn.Module)."""
    return small_cnn(num_classes)


def test_any_architecture_through_a_model_factory(compose_config, tmp_path):
    torch.save({"state_dict": small_cnn(num_classes=5).state_dict()}, tmp_path / "cnn.pt")
    overrides = ["model=module", "model.factory=test_models_custom:build_small_cnn", "+model.kwargs.num_classes=5",
                 "model.input_size=[32,32]", "model.mean=[0.5,0.5,0.5]", "model.std=[0.25,0.25,0.25]",
                 "model.class_names=[disk,square,triangle,plus,ring]", f"model.weights={tmp_path / 'cnn.pt'}"]
    bundle = create_model("module", **options_of(compose_config(overrides).model))
    assert bundle.input_size == (32, 32) and bundle.class_names[1] == "square" and bundle.target_layer == "8"
    assert bundle.name == "module.test_models_custom:build_small_cnn"
    scores = run_job(compose_config([*overrides, "debug=fast", "method=[gradcam]", "metric=[cam_paper]"]),
                     tmp_path / "job")
    assert set(scores["model"]) == {"module.test_models_custom:build_small_cnn"} and len(scores) > 0
    with pytest.raises(ValueError, match="model factory 'test_models_custom:nothing': test_models_custom has no "
                                         "attribute 'nothing'"):
        create_model("module", factory="test_models_custom:nothing")
    with pytest.raises(ValueError, match="returned a int, not an nn.Module"):
        create_model("module", factory="builtins:int")


# --------------------------------------------------------------------------- downloads
def test_torchvision_weights_come_from_torchvisions_download_when_online(tmp_path, monkeypatch):
    """Online: torchvision's WeightsEnum.get_state_dict -> torch.hub's download into the hub
    cache (monkeypatched to write a saved state dict); offline: the error names file and folder."""
    import salbench.models.torchvision as tv

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = create_model("torchvision", arch="resnet18", pretrained=False)
    torch.save(source.module.state_dict(), tmp_path / "published.pth")
    fetched = []

    def download(url, destination, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        Path(destination).write_bytes((tmp_path / "published.pth").read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth \(offline or model\.download=false: nothing "
                                                r"was fetched\)"):
        create_model("torchvision", arch="resnet18")  # SALBENCH_OFFLINE=1 (conftest): no download
    assert not fetched
    monkeypatch.setattr(tv, "download_allowed", lambda url, download=True: download)
    with pytest.raises(FileNotFoundError, match="nothing was fetched"):
        create_model("torchvision", arch="resnet18", download=False)
    bundle = create_model("torchvision", arch="resnet18")
    assert fetched == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert bundle.info["weights"] == str(cached) and len(bundle.info["weights_sha256"]) == 64
    assert all(torch.equal(v, bundle.module.state_dict()[k]) for k, v in source.module.state_dict().items())

    cached.unlink()

    def offline(url, destination, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError) as error:
        create_model("torchvision", arch="resnet18")
    message = str(error.value)
    assert f"expected {cached}" in message and "the download failed: URLError" in message
    assert f"into {cached.parent}" in message


def test_timm_weights_come_from_timms_download_when_online(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    import salbench.models.timm as timm_models
    import timm.models._hub as hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False).eval()
    asked = []

    def hf_hub_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        """What the Hugging Face hub's download leaves: the file in the cache's snapshot layout."""
        asked.append((repo_id, filename))
        repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0123abcd")
        snapshot = repo / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True, exist_ok=True)
        save_file(source.state_dict(), str(snapshot / filename))
        return str(snapshot / filename)

    monkeypatch.setattr(hub, "hf_hub_download", hf_hub_download)
    with pytest.raises(FileNotFoundError, match="nothing was fetched"):
        create_model("timm", arch="resnet18")  # offline (conftest): timm is not asked
    assert not asked
    monkeypatch.setattr(timm_models, "download_allowed", lambda url, download=True: download)
    bundle = create_model("timm", arch="resnet18")
    assert asked[0] == ("timm/resnet18.a1_in1k", "model.safetensors")
    assert bundle.info["weights"].endswith("models--timm--resnet18.a1_in1k/snapshots/0123abcd/model.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bundle.module(x), source(x))
