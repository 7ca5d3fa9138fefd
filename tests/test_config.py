"""Every option in conf/ composes through Hydra's compose API, validates against its schema and
(where it needs no external files) instantiates."""
import json
from pathlib import Path

import pytest

from salbench.harness.cli import config_dir
from salbench.datasets import create_dataset
from salbench.methods import create_method
from salbench.metrics import create_metric
from salbench.models import create_model
from salbench.harness.schema import options_of, validate_config

CONF = Path(config_dir())
MULTI = ("method", "metric")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def override(group, option):
    return f"{group}=[{option}]" if group in MULTI else f"{group}={option}"


def needs_files(node):
    """Datasets/models whose config points at data the test machine does not have: a dataset
    ``root`` left empty, pretrained torchvision/timm weights (never on the test machine)."""
    return node.get("root", "absent") in (None, "???") or node.get("factory", "absent") is None or (
        node.get("name") in ("torchvision", "timm") and node.get("pretrained", False)
    )


@pytest.mark.parametrize("group", ["method", "metric", "model", "dataset", "experiment", "debug"])
def test_every_option_composes_and_validates(compose_config, group):
    found = options(group)
    assert found, f"conf/{group} has no options"
    for option in found:
        cfg = compose_config([override(group, option)] if group not in ("experiment", "debug") else [f"{group}={option}"])
        validate_config(cfg)


def test_every_method_and_metric_option_instantiates(compose_config, synthetic_bundle):
    for option in options("method"):
        cfg = compose_config([f"method=[{option}]"])
        for node in cfg.method.values():
            if needs_files(node):  # saved maps: the folder is the user's
                with pytest.raises(ValueError, match="set root"):
                    create_method(node.name, synthetic_bundle, **options_of(node, "method"))
                continue
            explainer = create_method(node.name, synthetic_bundle, **options_of(node, "method"))
            assert explainer.options()["method"] == node.name
    for option in options("metric"):
        cfg = compose_config([f"metric=[{option}]"])
        for node in cfg.metric.values():
            metric = create_metric(node.name, **options_of(node))
            # the packaged YAML keeps the metric's named preset (the demo's overrides make "custom")
            assert metric.preset == create_metric(node.name).preset != "custom", option
            assert json.dumps(metric.protocol(), default=str) and metric.describe()["name"] == node.name


def test_model_and_dataset_options_instantiate_when_their_files_are_here(compose_config):
    built = []
    for option in options("model"):
        node = compose_config([f"model={option}"]).model
        if not needs_files(node):
            assert create_model(node.name, **options_of(node)).num_classes > 0
            built.append(option)
    for option in options("dataset"):
        node = compose_config([f"dataset={option}"]).dataset
        if not needs_files(node):
            dataset = create_dataset(node.name, **options_of(node))
            assert len(dataset) > 0 and "image" in dataset[0], option
            built.append(option)
    # the packaged model and the data that ship with the project are always here
    assert {"synthetic_cnn", "efficientnet_lite0", "synthetic", "samples", "grid"} <= set(built)


def test_bad_values_name_the_key_and_the_choices(compose_config):
    with pytest.raises(ValueError, match="(?s)Key 'bogus'.*valid options: layer"):
        validate_config(compose_config(["+method.gradcam.bogus=1"]))
    with pytest.raises(ValueError, match="unknown target 'foo'; valid: label, predicted"):
        validate_config(compose_config(["target=foo"]))
    with pytest.raises(Exception, match="num_images"):
        validate_config(compose_config(["dataset.num_images=abc"]))


def test_multi_select_groups_hold_several_methods(compose_config):
    cfg = compose_config(["method=[gradcam,random]"])
    assert list(cfg.method) == ["gradcam", "random"]


def test_settings_of_unselected_options_are_dropped_with_a_note(compose_config):
    from salbench.harness.schema import drop_unselected_settings

    cfg = compose_config(["experiment=demo", "metric=[cam_paper]"])  # the demo sets metric.rise.n_steps
    notes = drop_unselected_settings(cfg)
    assert any(note.startswith("metric.rise settings {'n_steps': 32,") and "ignored: 'rise' is not selected" in note
               for note in notes), notes
    assert list(cfg.metric) == ["cam_paper"]
    validate_config(cfg)
