"""The report page opens in headless Chromium; the screenshot shows the summary table and a figure.

Slow (starts a browser): ``make test-report-browser``. Skipped when Debian's ``chromium`` is absent.
"""
from __future__ import annotations

import html
import re
import shutil
import subprocess

import numpy as np
import pytest

from test_reports import make_job, results  # noqa: F401  (the fixture is used by name)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def screenshot(page, png, profile, size=(1200, 2000)):
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                             f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    import matplotlib.pyplot as plt

    return (plt.imread(str(png))[..., :3] * 255).round().astype(np.int16)


def longest_dark_run(row: np.ndarray) -> int:
    dark = (row.max(axis=1) < 80).astype(np.int8)
    best = run = 0
    for value in dark:
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def test_page_screenshot_shows_the_table_and_a_figure(tmp_path, results):  # noqa: F811
    from salbench.reports.report import ReportOptions, write_report

    make_job(tmp_path / "run", results)
    out = tmp_path / "report"
    write_report([str(tmp_path / "run")], out, ReportOptions(resamples=100))
    pixels = screenshot(out / "index.html", tmp_path / "page.png", tmp_path / "profile")
    assert pixels.shape[:2] == (2000, 1200)
    # the table: its booktabs-like top rule is a long dark horizontal line (a text line never is)
    rules = [y for y in range(pixels.shape[0]) if longest_dark_run(pixels[y]) > 400]
    assert rules, "no table rule in the screenshot"
    # a figure: matplotlib's tab:blue (31, 119, 180) markers/lines/bands are rendered pixels
    blue = (np.abs(pixels - np.array([31, 119, 180])).max(axis=2) < 30).sum()
    assert blue > 200, f"only {blue} plot-blue pixels: no figure rendered"
    # and the page is not one colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    # a blank page shows neither (the checks can fail)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body><p>salbench</p></body></html>")
    empty = screenshot(blank, tmp_path / "blank.png", tmp_path / "profile2")
    assert not any(longest_dark_run(empty[y]) > 400 for y in range(0, empty.shape[0], 4))
    assert (np.abs(empty - np.array([31, 119, 180])).max(axis=2) < 30).sum() == 0


# --------------------------------------------------------------------------- comparisons and viewer
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" src="index.html%s" style="width:1200px;height:30000px;border:0"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById('page').addEventListener('load', function () {
  var d = this.contentDocument, out = {};
  function box(el) {
    if (!el) { return null; }
    var r = el.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height, natural: el.naturalWidth || 0};
  }
  out.cd = box(d.querySelector('figure[id^="cd-"]:not([id^="cd-across"]) img'));
  out.cd_across = box(d.querySelector('figure[id^="cd-across-"] img'));
  out.agreement = box(d.querySelector('figure[id^="agreement-"] img'));
  out.wins = box(d.querySelector('figure[id^="wins-"] img'));
  var viewer = d.querySelector('.viewer');
  out.options = viewer ? viewer.querySelectorAll('option').length : 0;
  out.shown = viewer && viewer.getAttribute('data-shown');
  function visible() {
    return Array.prototype.filter.call(d.querySelectorAll('.viewer-panel'), function (p) {
      return getComputedStyle(p).display !== 'none'; });
  }
  var panels = visible();
  out.visible_panels = panels.length;
  out.panel = box(panels[0]);
  out.maps = panels[0] ? Array.prototype.map.call(panels[0].querySelectorAll('svg.vmap'), function (svg) {
    var b = box(svg); b.href = svg.querySelector('image').getAttribute('href').slice(0, 22);
    b.gt = svg.querySelectorAll('rect.gt').length; b.pred = svg.querySelectorAll('rect.pred').length; return b; }) : [];
  out.score_rows = panels[0] ? panels[0].querySelectorAll('table.vscores tbody tr').length : 0;
  if (viewer) { viewer.querySelector('.viewer-next').click(); out.after_next = viewer.getAttribute('data-shown');
                out.visible_after_next = visible().length; }
  document.getElementById('out').textContent = JSON.stringify(out);
});
</script></body></html>"""


def probe(report, tmp_path, fragment=""):
    """Open index.html (with ``fragment``) in an iframe of a probe page and read back, as JSON,
    where the figures and the viewer rendered (file pages may read each other with the flag)."""
    import json

    page = report / f"probe{abs(hash(fragment))}.html"
    page.write_text(PROBE % fragment)
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'probe-profile'}",
                             "--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom",
                             page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1) != "pending", result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_comparisons_and_the_per_image_viewer_render(tmp_path, compose_config, synthetic_bundle):
    """The demo's synthetic cell: the CD diagrams, the agreement matrix and the viewer render; the
    viewer follows #image=ID and its buttons; its maps show heatmap colours and the boxes."""
    from test_compare_demo import run_demo_cell

    from salbench.reports.report import ReportOptions, write_report

    run = run_demo_cell(tmp_path / "demo", compose_config)
    report = tmp_path / "report"
    write_report([str(run)], report, ReportOptions(resamples=200))
    found = probe(report, tmp_path)
    for figure in ("cd", "cd_across", "agreement", "wins"):
        assert found[figure] and found[figure]["natural"] > 200 and found[figure]["w"] > 200, (figure, found[figure])
    assert found["options"] == 32 and found["shown"] == "synthetic-test-0-000000" and found["visible_panels"] == 1
    assert found["after_next"] == "synthetic-test-0-000001" and found["visible_after_next"] == 1
    maps = found["maps"]
    assert len(maps) == 6  # the image and the five methods' maps
    assert all(m["href"].startswith("data:image/jpeg;base64") and m["w"] == 150 for m in maps)
    assert maps[0]["gt"] >= 1 and all(m["pred"] == 1 for m in maps[1:3])  # Grad-CAM, CAM: a predicted box
    assert found["score_rows"] == 6  # the localization scores with values (no difficult subset)
    linked = probe(report, tmp_path, "#image=synthetic-test-0-000007")
    assert linked["shown"] == "synthetic-test-0-000007" and linked["visible_panels"] == 1

    # the screenshot: the viewer's maps are drawn (jet colours) with the cyan dashed predicted boxes
    panel = found["panel"]
    height = int(panel["y"] + panel["h"] + 40)
    assert height < 16000
    pixels = screenshot(report / "index.html", tmp_path / "page.png", tmp_path / "profile", size=(1200, height))
    for m in maps[1:]:
        crop = pixels[int(m["y"]) + 2:int(m["y"] + m["h"]) - 2, int(m["x"]) + 2:int(m["x"] + m["w"]) - 2]
        assert len(np.unique(crop.reshape(-1, 3), axis=0)) > 100, m  # a picture, not a blank box
    grad = maps[1]
    crop = pixels[int(grad["y"]):int(grad["y"] + grad["h"]), int(grad["x"]):int(grad["x"] + grad["w"])]
    cyan = (np.abs(crop - np.array([0, 255, 255])).max(axis=2) < 40).sum()
    assert cyan > 30, f"{cyan} cyan pixels: no predicted box drawn"
    red = ((crop[..., 0] > 170) & (crop[..., 1] < 110) & (crop[..., 2] < 110)).sum()
    assert red > 20, f"{red} red pixels: no heatmap overlay"
    # the CD diagram's figure is in the screenshot too (its black axis and bars on white)
    cd = found["cd"]
    crop = pixels[int(cd["y"]):int(cd["y"] + cd["h"]), int(cd["x"]):int(cd["x"] + cd["w"])]
    assert (crop.max(axis=2) < 60).sum() > 500
