"""The inspection page renders in headless Chromium with every kind of picture, for the synthetic
CNN on the synthetic shapes and for EfficientNet-Lite0 on the sample photos.

Chromium loads a copy of ``index.html`` with a probe script appended that lists, for every
``<figure data-kind>``, whether its image decoded (``naturalWidth > 0``) and is laid out with a
non-zero size; ``--dump-dom`` returns the page with that list. A screenshot of the page itself
must not be blank. Slow (inspections and a browser): ``make test-report-browser``; skipped when
Debian's ``chromium`` is absent.
"""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from test_reports_browser import CHROMIUM, FLAGS, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

KINDS = ("filters", "activations", "patches", "class_model", "embeddings", "dissection")
PROBE = """<script>
window.addEventListener("load", () => {
  const found = [...document.querySelectorAll("figure[data-kind] img")].map(img => {
    const box = img.getBoundingClientRect();
    return {kind: img.closest("figure").dataset.kind, decoded: img.complete && img.naturalWidth > 0,
            width: box.width, height: box.height};
  });
  const out = document.createElement("pre");
  out.id = "render-probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def rendered_figures(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}", "--virtual-time-budget=10000",
                             "--dump-dom", probe.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="render-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, "the probe did not run"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def check_page(folder, tmp_path):
    figures = rendered_figures(folder / "index.html", tmp_path)
    for kind in KINDS:
        shown = [f for f in figures if f["kind"] == kind]
        assert shown, f"no {kind} figure"
        assert all(f["decoded"] and f["width"] > 50 and f["height"] > 50 for f in shown), (kind, shown)
    pixels = screenshot(folder / "index.html", tmp_path / "page.png", tmp_path / "profile-shot", size=(1200, 3000))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # figures, not a blank page


@pytest.fixture(scope="module")
def compose_inspect():
    from hydra import compose, initialize_config_dir

    from salbench.harness.cli import config_dir
    from salbench.inspection.config import register_inspect_schema

    register_inspect_schema()

    def _compose(overrides):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name="inspect", overrides=list(overrides))

    return _compose


def test_synthetic_cnn_page_shows_every_kind_of_picture(tmp_path, compose_inspect, synthetic_bundle):
    from salbench.inspection.job import run_inspection

    run_inspection(compose_inspect(["inspect=fast", "progress=false", "dataset.num_images=64"]), tmp_path / "synthetic")
    check_page(tmp_path / "synthetic", tmp_path)


def test_efficientnet_lite0_page_on_the_sample_photos_shows_every_kind_of_picture(tmp_path, compose_inspect):
    from salbench.inspection.job import run_inspection

    overrides = ["inspect=fast", "progress=false", "model=efficientnet_lite0", "dataset=samples", "inspect.class_model.steps=5"]
    run_inspection(compose_inspect(overrides), tmp_path / "lite0")
    check_page(tmp_path / "lite0", tmp_path)
    # the sample photos carry boxes, not masks: the concepts are their filled boxes
    info = json.loads((tmp_path / "lite0" / "run.json").read_text())
    assert info["figures"]["dissection"]["concept_source"] == ["boxes"]


def test_the_probe_fails_on_a_page_whose_figure_does_not_decode(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><figure data-kind="filters"><img src="data:image/png;base64,AAAA"></figure></body></html>')
    figures = rendered_figures(page, tmp_path)
    assert figures == [{"kind": "filters", "decoded": False, "width": figures[0]["width"], "height": figures[0]["height"]}]
