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
    for package in ("methods", "metrics", "datasets", "reports"):
        assert f"salbench/{package}/__init__.py" in names
    assert "salbench/conf/config.yaml" in names and "salbench/conf/method/gradcam.yaml" in names
    assert "salbench/runner.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "salbench = salbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
