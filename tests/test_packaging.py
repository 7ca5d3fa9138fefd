"""The wheel installs one import namespace, salbench: no top-level datasets/metrics/methods/reports."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_only_the_salbench_namespace_and_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("salbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"salbench", next(t for t in top if t.endswith(".dist-info"))}, top
    for package in ("harness", "methods", "metrics", "models", "datasets", "reports"):
        assert f"salbench/{package}/__init__.py" in names
    assert "salbench/conf/config.yaml" in names and "salbench/conf/method/gradcam.yaml" in names
    assert "salbench/harness/runner.py" in names and "salbench/models/weights/synthetic_cnn.pt" in names
    assert not any(n.startswith(("salbench/tests/", "salbench/benchmarks/", "salbench/.venv/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "salbench = salbench.harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_import_path_names_its_file():
    """salbench.X.Y lives at X/Y.py (a package at X/Y/__init__.py), for every module of the package."""
    import importlib
    import os
    import pkgutil

    import salbench

    assert Path(salbench.__file__).resolve() == ROOT / "__init__.py"
    checked, wrong = 0, []
    for info in pkgutil.walk_packages(salbench.__path__, "salbench."):
        if info.name.startswith(("salbench.conf", "salbench.benchmarks")):
            continue
        module = importlib.import_module(info.name)
        relative = Path(os.path.realpath(module.__file__)).relative_to(ROOT).as_posix()
        expected = info.name.split(".", 1)[1].replace(".", "/")
        if relative not in (expected + ".py", expected + "/__init__.py"):
            wrong.append(f"{info.name} is {relative}")
        checked += 1
    assert not wrong, wrong
    assert checked >= 50  # every harness, methods, metrics, models, datasets and reports module
