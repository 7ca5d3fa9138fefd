"""Plugins: modules outside salbench register a method (a plain function), a metric, a model and
a dataset with the public decorators; ``plugins=[module]`` and the ``salbench.plugins`` entry
point load them; their names are config options on the command line, in sweeps, in ``--help``
and in reports; a wrong signature is a clear error; a plugin metric's state survives a
checkpoint. The example plugin package (examples/plugin) is used both ways."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import salbench
from salbench.harness import plugins
from salbench.harness.registry import OptionError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin"
SALBENCH = str(Path(sys.executable).with_name("salbench"))
NAMES = {"method": ["gradient_x_input"], "metric": ["concentration"], "model": ["example_net"], "dataset": ["stripes"]}
FAST = ["debug=fast", "model=example_net", "dataset=stripes"]
RISE = "metric.rise.n_steps=4"


def registries():
    from salbench.datasets import DATASETS
    from salbench.methods import METHODS
    from salbench.metrics import METRICS
    from salbench.models import MODELS

    return {"method": METHODS, "metric": METRICS, "model": MODELS, "dataset": DATASETS}


def forget(module: str, names: dict) -> None:
    """Undo a plugin's registrations (registries, ConfigStore nodes, the loaded-plugin record)."""
    from hydra.core.config_store import ConfigStore

    for kind, registry in registries().items():
        for name in names.get(kind, []):
            registry._entries.pop(name, None)
            ConfigStore.instance().repo.get(kind, {}).pop(f"{name}.yaml", None)
    plugins._LOADED.pop(module, None)
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[loaded]


@pytest.fixture
def example(monkeypatch):
    """The example plugin loaded through plugins=[...] (its folder on sys.path), undone afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins.load_plugins(["salbench_example_plugin"])
    yield sys.modules["salbench_example_plugin"]
    forget("salbench_example_plugin", NAMES)


def env_with(*paths: Path) -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = ":".join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env


def run_cli(*args, env=None, cwd=None, check=True):
    result = subprocess.run([SALBENCH, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------- in process
def test_a_function_method_takes_its_options_from_the_signature(example):
    from salbench.methods import create_method
    from salbench.harness.schema import config_node
    from salbench.methods import METHODS

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    explainer = create_method("gradient_x_input", model, absolute=False)
    assert explainer.options() == {"method": "gradient_x_input", "relu": False, "channel_reduction": "none",
                                   "upsample": "bilinear", "align_corners": False, "absolute": False}
    maps = explainer(x, target)
    leaf = x.clone().requires_grad_(True)  # the reference: gradient x input by hand
    (gradient,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    torch.testing.assert_close(maps, (gradient * x).sum(1), rtol=0, atol=0)
    assert example.gradient_x_input(model, x, target).shape == (2, 8, 8)  # the function stays as written
    with pytest.raises(OptionError, match="no option 'absolut'; valid options: absolute, relu"):
        create_method("gradient_x_input", model, absolut=True)
    assert config_node("method", "gradient_x_input", METHODS.get("gradient_x_input")) == {"gradient_x_input": {
        "name": "gradient_x_input", "label": None, "absolute": True, "relu": None, "channel_reduction": None,
        "upsample": None, "align_corners": None}}
    assert {"gradient_x_input"} <= set(salbench.list_methods("grad*")) and "stripes" in salbench.list_datasets()


@pytest.mark.parametrize("code, message", [
    pytest.param("def bad(model, x):\n    return x.sum(1)", r"a method function is f\(model, x, target, \*\*options\)",
                 id="too-few-parameters"),
    pytest.param("def bad(model, x, target, sigma):\n    return x.sum(1)", "option 'sigma' of bad has no default",
                 id="option-without-default"),
    pytest.param("def bad(model, x, target, relu=True):\n    return x.sum(1)", "option 'relu' is reserved",
                 id="reserved-option"),
    pytest.param("class bad:\n    pass", "is not an Explainer subclass or a function", id="not-an-explainer"),
])
def test_a_plugin_with_a_wrong_signature_is_a_clear_error(tmp_path, monkeypatch, code, message):
    (tmp_path / "wrong_plugin.py").write_text(f"import salbench\n\n@salbench.register_method('bad')\n{code}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(plugins.PluginError, match=rf"plugin 'wrong_plugin' failed to import: TypeError: "
                                                  rf"register_method\('bad'\).*{message}"):
        plugins.load_plugins(["wrong_plugin"])
    assert "bad" not in salbench.list_methods()
    sys.modules.pop("wrong_plugin", None)


def test_a_registration_of_the_wrong_kind_is_a_clear_error():
    with pytest.raises(TypeError, match=r"register_metric\('m'\).*is not a Metric subclass"):
        salbench.register_metric("m")(dict)
    with pytest.raises(TypeError, match=r"register_dataset\('d'\).*is not a LocalizationDataset subclass"):
        salbench.register_dataset("d")(dict)
    with pytest.raises(ValueError, match=r"method 'gradcam' is registered twice: by salbench\.methods\.gradcam\.GradCAM"):
        salbench.register_method("gradcam")(lambda model, x, target: x.sum(1))
    with pytest.raises(plugins.PluginError, match="plugin 'no_such_plugin' cannot be imported: no module named"):
        plugins.load_plugins(["no_such_plugin"])


def test_registered_names_are_options_of_their_groups(example, compose_config, tmp_path):
    """The stored nodes compose like YAMLs (also in the names pre-check, with --config-dir and
    hydra.searchpath options next to them)."""
    from salbench.harness.cli import group_choices, unknown_group_options
    from salbench.harness.schema import validate_config

    cfg = compose_config(["plugins=[salbench_example_plugin]", "model=example_net", "dataset=stripes",
                          "method=[gradient_x_input,gradcam]", "metric=[concentration]",
                          "method.gradient_x_input.absolute=false", "metric.concentration.fraction=0.2"])
    validate_config(cfg)
    assert cfg.method.gradient_x_input.absolute is False and cfg.dataset.thickness == 6 and cfg.model.width == 8
    assert {"gradient_x_input", "gradcam"} <= set(group_choices("method"))
    mine = tmp_path / "conf" / "method"
    mine.mkdir(parents=True)
    (mine / "my_yaml_method.yaml").write_text("my_yaml_method:\n  name: gradcam\n")
    searched = tmp_path / "searched" / "metric"
    searched.mkdir(parents=True)
    (searched / "my_metric.yaml").write_text("my_metric:\n  name: rise\n")
    argv = ["method=[gradient_x_input,my_yaml_method]", "metric=[my_metric]", f"hydra.searchpath=[file://{searched.parent}]",
            "--config-dir", str(tmp_path / "conf")]
    assert unknown_group_options(argv[:3], argv=argv) == []
    problems = unknown_group_options(["method=[my_yaml_methd]"], argv=argv)
    assert problems and "Did you mean 'my_yaml_method'" in problems[0]
    assert unknown_group_options(["method=[my_yaml_method]"], argv=["method=[my_yaml_method]"])  # not searched


def test_a_plugin_metrics_state_survives_a_checkpoint(example, compose_config, tmp_path, monkeypatch):
    """A job that fails after its first flushed chunk resumes with the plugin metric's
    accumulator (an object of the plugin's own class) and ends with the uninterrupted scores."""
    from salbench.harness import store
    from salbench.harness.runner import run_job

    state = example.Accumulator()
    state.add(torch.tensor([1.0, 2.0]))
    assert vars(store.from_plain(store.to_plain(state))) == {"total": 3.0, "count": 2}
    common = ["plugins=[salbench_example_plugin]", *FAST, "method=[gradient_x_input]", "metric=[concentration]",
              "batch_size=2", "forward_chunk=2", "flush_every=4", "gallery_images=0"]
    reference = run_job(compose_config(common), tmp_path / "reference")
    original = example.Concentration.update_method
    calls = {"n": 0}

    def failing(self, explained):
        calls["n"] += 1
        if calls["n"] == 3:  # the first batch after the first flush
            raise RuntimeError("killed")
        return original(self, explained)

    monkeypatch.setattr(example.Concentration, "update_method", failing)
    with pytest.raises(RuntimeError, match="killed"):
        run_job(compose_config(common), tmp_path / "resumed")
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert "salbench_example_plugin:Accumulator" in json.dumps(saved["state"], default=str)
    monkeypatch.setattr(example.Concentration, "update_method", original)
    resumed = run_job(compose_config(common), tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["resumed_from"] == 4
    key = ["method", "metric", "score", "image_index"]
    pd.testing.assert_frame_equal(resumed.sort_values(key).reset_index(drop=True),
                                  reference.sort_values(key).reset_index(drop=True))
    # a checkpoint of a class no loaded plugin defines is refused, not imported
    with pytest.raises(ValueError, match="refusing to rebuild os:PathLike"):
        store.from_plain({"__object__": "os:PathLike", "state": {"__dict__": []}})


# --------------------------------------------------------------------------- command line
@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_plugins_option_runs_a_sweep_from_the_command_line_and_reports_it(tmp_path):
    """``salbench -m plugins=[...] method=[its_method,gradcam] metric=[its_metric,rise]``: two
    jobs of the plugin's model and dataset; --help lists the names; the report shows them."""
    from salbench.reports.cli import main as report_main

    env = env_with(EXAMPLE)
    out = tmp_path / "sweep"
    run_cli("-m", "plugins=[salbench_example_plugin]", *FAST, "method=[gradient_x_input,gradcam]",
            "metric=[concentration,rise]", RISE, "seed=0,1", f"hydra.sweep.dir={out}", env=env, cwd=tmp_path)
    for job in ("0", "1"):
        scores = pd.read_parquet(out / job / "scores.parquet")
        assert set(scores["method"]) == {"gradient_x_input", "gradcam"}
        assert set(scores["metric"]) == {"concentration", "rise"} and set(scores["model"]) == {"example_net"}
        assert set(scores.loc[scores["scope"] == "dataset", "score"]) == {"concentration_mean"}
        info = json.loads((out / job / "run.json").read_text())
        assert info["plugins"]["salbench_example_plugin"]["source"] == "plugins"
        assert info["config"]["plugins"] == ["salbench_example_plugin"]
    assert report_main([str(out), "--out", str(tmp_path / "report")]) == 0
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert {"gradient_x_input", "gradcam"} <= set(summary["method"]) and "concentration" in set(summary["score"])


def test_plugin_names_in_help_and_errors_of_the_command_line(example, capsys):
    """The names pre-check knows the plugin's names (close matches), a missing plugin is one line
    and exit status 2 (in process: both fail before Hydra starts)."""
    from salbench.harness.cli import main

    with pytest.raises(SystemExit) as exit_code:
        main(["plugins=[salbench_example_plugin]", "method=[gradient_x_inpt]"])
    assert exit_code.value.code == 2 and "Did you mean 'gradient_x_input'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:
        main(["plugins=[salbench_example_plugn]"])
    assert exit_code.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "salbench: error: plugin 'salbench_example_plugn' cannot be imported: no module named "
        "'salbench_example_plugn' (install it, or add its folder to PYTHONPATH)"]


@pytest.mark.slow
def test_help_lists_the_plugins_names(tmp_path):
    shown = run_cli("plugins=[salbench_example_plugin]", "--help", env=env_with(EXAMPLE), cwd=tmp_path).stdout
    listing = shown.split("== Config ==")[0]  # the groups' options, before the config dump
    groups = {line.split(":")[0]: line for line in listing.splitlines() if ":" in line}
    for group, name in (("method", "gradient_x_input"), ("metric", "concentration"), ("model", "example_net"),
                        ("dataset", "stripes")):
        assert name in groups[group], shown


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin pip-installed (a copy of examples/plugin, so no build files land in
    the repository) into a target folder: a distribution with its entry point."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, work / "source")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(work / "site"), str(work / "source")], check=True, capture_output=True, timeout=300)
    return work / "site"


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_the_installed_entry_point_loads_the_plugin_without_plugins_option(installed, tmp_path, monkeypatch):
    entry_points = next(installed.glob("salbench_example_plugin-*.dist-info")) / "entry_points.txt"
    assert "[salbench.plugins]\nexample = salbench_example_plugin" in entry_points.read_text()
    # in process: what a fresh process's first registry lookup does (this one's registries
    # were looked up before the plugin was installed)
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    plugins.load_entry_points()
    try:
        assert salbench.list_methods("gradient*") == ["gradient_x_input"] and salbench.list_models("example*")
        assert salbench.create_dataset("stripes", num_images=3)[2]["image_id"] == "stripes/0002"
        assert plugins.loaded_plugins()["salbench_example_plugin"] == {
            "source": "entry point example", "distribution": "salbench-example-plugin", "version": "0.1.0"}
        assert sys.modules["salbench_example_plugin"].__file__.startswith(str(installed))
    finally:
        forget("salbench_example_plugin", NAMES)
    # a fresh Python process: the first registry lookup loads the entry point
    listed = subprocess.run([sys.executable, "-c", "import salbench; print(salbench.list_methods('gradient*'))"],
                            capture_output=True, text=True, timeout=300, env=env_with(installed))
    assert listed.returncode == 0 and listed.stdout.strip() == "['gradient_x_input']", listed.stderr[-2000:]
    # on the command line, without plugins=
    out = tmp_path / "run"
    run_cli(*FAST, "method=[gradient_x_input,gradcam]", "metric=[concentration,rise]", RISE, f"hydra.run.dir={out}",
            env=env_with(installed), cwd=tmp_path)
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"gradient_x_input", "gradcam"} and set(scores["dataset"]) == {"stripes"}
    info = json.loads((out / "run.json").read_text())
    assert info["plugins"]["salbench_example_plugin"]["source"] == "entry point example"


def test_inspect_takes_the_plugins_option(tmp_path, monkeypatch):
    """``salbench inspect plugins=[...] model=<its model> dataset=<its dataset>``: the plugin is
    loaded before Hydra reads the names, the inspection runs on them and records the plugin."""
    from salbench.harness.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLE))
    out = tmp_path / "inspect"
    try:
        main(["inspect", "plugins=[salbench_example_plugin]", "model=example_net", "dataset=stripes",
              "dataset.num_images=16", "inspect=fast", "inspect.dissection.enabled=false", "device=cpu",
              "progress=false", f"hydra.run.dir={out}"])
    finally:
        forget("salbench_example_plugin", NAMES)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["config"]["model"]["name"] == "example_net"
    assert info["plugins"]["salbench_example_plugin"]["source"] == "plugins"
    assert info["config"]["plugins"] == ["salbench_example_plugin"]
