"""The per-image viewer: what a job keeps of its maps (``viewer.parquet``) and the report's
browsable view of them (choose an image, see every method's map with the ground-truth and
predicted boxes and the image's scores, side by side; static HTML and a little JavaScript).

Job side (:func:`collect`, :func:`table`, called by the job loop with every method's maps, no
component named): for the first ``viewer_images`` images (default :data:`VIEWER_IMAGES`) it keeps

* the image, downsampled (area averaging) so that its longest side is at most
  :data:`THUMBNAIL_SIDE` pixels, as uint8 RGB;
* each method's heatmap of the job's target class, downsampled the same way and stored as uint8
  over ``[low, high]`` = [min, :data:`STORED_PERCENTILE`-th percentile] of the downsampled map
  (values above saturate; ``low`` and ``high`` are stored, so ``value ~ low + q / 255 * (high -
  low)``), with its map flag (constant / non-finite) and its predicted box (the CAM paper's rule
  at 0.2 x max, computed on the full-resolution map, in input pixels);
* the ground-truth boxes (input pixels) and the label, target and predicted classes.

``boxes`` is JSON: ``[[x0, y0, x1, y1], ...]`` inclusive input pixels (the ground truth on image
rows, the predicted box, or none, on map rows).

One row per image (``kind == "image"``, ``method`` empty) and one per (image, method) (``kind ==
"map"``); ``pixels`` holds the uint8 array ([h, w, 3] or [h, w]) as a lossless PNG file's bytes.
About 2-8 KB per thumbnail: 32 images of 10 methods take ~1 MB.

Report side (:func:`viewer_html`): maps drawn with :func:`salbench.reports.gallery.display_scale`
(pixel-space maps clipped at the 99th percentile by default) and embedded as JPEG, boxes as SVG
rectangles over the thumbnails (exact at any zoom), the image's score units (the mean of its rows, as the summary's
bootstrap uses them) in a table under the maps; scores without any value are left out.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

VIEWER_IMAGES = 32  # images per job whose maps the viewer keeps (the job's ``viewer_images`` setting when set)
THUMBNAIL_SIDE = 64  # longest side of the stored thumbnails, in pixels
STORED_PERCENTILE = 99.9  # maps stored as uint8 over [min, this percentile]
BOX_THRESHOLD = 0.2  # the gallery's predicted-box rule (CAM paper): pixels >= 0.2 x max, largest component
COLUMNS = ["kind", "method", "image_index", "image_id", "label", "label_name", "target", "target_name", "predicted",
           "predicted_name", "input_height", "input_width", "height", "width", "pixels", "low", "high", "boxes",
           "flag"]


# --------------------------------------------------------------------------- job side
def new_state(size: int = VIEWER_IMAGES) -> Dict[str, Any]:
    """The job's viewer accumulator (plain data and tensors: checkpointed with the job's state)."""
    return {"size": int(size), "count": 0, "records": []}


def thumbnail_size(height: int, width: int, side: int = THUMBNAIL_SIDE) -> tuple:
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _downsample(x: Tensor, size: tuple) -> Tensor:
    """x [N, C, H, W] -> [N, C, h, w] by area averaging (no resampling when the size is kept)."""
    x = x.float()
    return x if tuple(x.shape[-2:]) == tuple(size) else torch.nn.functional.interpolate(x, size=size, mode="area")


def quantize_maps(maps: Tensor, size: tuple) -> tuple:
    """maps [N, H, W] -> (uint8 [N, h, w], low [N], high [N]): downsampled, then mapped linearly
    from [min, :data:`STORED_PERCENTILE`-th percentile] to [0, 255] (non-finite values as the
    minimum; a constant map gives zeros)."""
    small = _downsample(torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)[:, None], size)[:, 0]
    flat = small.flatten(1).double().cpu()
    low = flat.amin(1)
    high = torch.quantile(flat, STORED_PERCENTILE / 100.0, dim=1)
    high = torch.where(high > low, high, flat.amax(1))
    span = (high - low).clamp_min(1e-300)
    scaled = ((flat - low[:, None]) / span[:, None]).clamp(0, 1)
    scaled = torch.where((high > low)[:, None], scaled, torch.zeros_like(scaled))
    return (scaled * 255).round().to(torch.uint8).view(small.shape), low, high


def _name(names: Sequence[str], index: int) -> str:
    return str(names[index]) if 0 <= index < len(names) else str(index)


def collect(state: Dict[str, Any], batch: Any, maps: Mapping[str, Tensor], targets: Tensor, predicted: Tensor,
            flags: Mapping[str, Sequence[str]], class_names: Sequence[str] = ()) -> None:
    """Keep the viewer's records of the batch's images while fewer than ``state["size"]`` are
    kept. ``maps``: {method: [B, H, W]} of the job's target classes; ``flags``: {method: [B]}."""
    from salbench.reports.gallery import predicted_box

    need = min(len(batch), state["size"] - state["count"])
    if need <= 0:
        return
    images = batch.images[:need]
    height, width = images.shape[-2:]
    size = thumbnail_size(height, width)
    pictures = (_downsample(images, size).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    quantized = {key: quantize_maps(value[:need], size) for key, value in maps.items()}
    labels, targets, predicted = batch.labels[:need].tolist(), targets[:need].tolist(), predicted[:need].tolist()
    for i in range(need):
        common = {"image_index": int(batch.indices[i]), "image_id": str(batch.image_ids[i]), "label": int(labels[i]),
                  "label_name": _name(class_names, int(labels[i])), "target": int(targets[i]),
                  "target_name": _name(class_names, int(targets[i])), "predicted": int(predicted[i]),
                  "predicted_name": _name(class_names, int(predicted[i])), "input_height": int(height),
                  "input_width": int(width), "height": int(size[0]), "width": int(size[1])}
        boxes = batch.boxes[i].detach().cpu().reshape(-1).tolist() if len(batch.boxes[i]) else []
        state["records"].append({**common, "kind": "image", "method": "", "pixels": pictures[i].permute(1, 2, 0).contiguous(),
                                 "low": 0.0, "high": 255.0, "boxes": _chunks(boxes), "flag": ""})
        for key, (pixels, low, high) in quantized.items():
            box = predicted_box(maps[key][i], BOX_THRESHOLD)
            state["records"].append({**common, "kind": "map", "method": key, "pixels": pixels[i].contiguous(),
                                     "low": float(low[i]), "high": float(high[i]),
                                     "boxes": [box] if box else [], "flag": str(flags[key][i])})
    state["count"] += need


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [h, w] or [h, w, 3] -> the bytes of a lossless PNG file (Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def read_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def table(state: Dict[str, Any]) -> pd.DataFrame:
    """The kept records as the ``viewer`` table (:data:`COLUMNS`; ``pixels`` as PNG bytes)."""
    rows = [{**record, "pixels": png_bytes(record["pixels"].numpy()), "boxes": json.dumps(record["boxes"])}
            for record in state["records"]]
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- report side
def _pixels(row: Any) -> np.ndarray:
    pixels = read_png(row.pixels)
    expected = (int(row.height), int(row.width), 3) if row.kind == "image" else (int(row.height), int(row.width))
    if pixels.shape != expected:
        raise ValueError(f"viewer thumbnail of {row.image_id!r} ({row.method or 'image'}) has shape {pixels.shape}; "
                         f"expected {expected}")
    return pixels


def _jpeg(rgb: np.ndarray, quality: int = 90) -> str:
    """uint8 [h, w, 3] -> a ``data:`` URI of a JPEG (quality 90: a 64 px map in ~3 KB instead of the
    ~11 KB of a PNG of a noisy overlay; the boxes are SVG, drawn exactly over it)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """image uint8 [h, w, 3], heat [h, w] in [0, 1] -> uint8 [h, w, 3]: the jet colours of
    ``heat`` blended over the image (the gallery's look)."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * colours).clip(0, 1).__mul__(255).round().astype(np.uint8)


def _svg(uri: str, row: Any, boxes: Sequence[Sequence[float]], predicted: Optional[Sequence[float]],
         title: str) -> str:
    width, height = int(row.input_width), int(row.input_height)
    stroke = max(width, height) / 110
    rects = [f'<rect class="gt" x="{x0:g}" y="{y0:g}" width="{x1 - x0 + 1:g}" height="{y1 - y0 + 1:g}" '
             f'fill="none" stroke="white" stroke-width="{stroke:.3g}"/>' for x0, y0, x1, y1 in boxes]
    if predicted:
        x0, y0, x1, y1 = predicted
        rects.append(f'<rect class="pred" x="{x0:g}" y="{y0:g}" width="{x1 - x0 + 1:g}" height="{y1 - y0 + 1:g}" '
                     f'fill="none" stroke="cyan" stroke-dasharray="{3 * stroke:.3g} {2 * stroke:.3g}" '
                     f'stroke-width="{stroke:.3g}"/>')
    return (f'<svg class="vmap" viewBox="0 0 {width} {height}" width="150" height="{150 * height / width:.0f}" '
            f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
            f'<image href="{uri}" x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none"/>'
            + "".join(rects) + "</svg>")


def _chunks(flat: Sequence[float]) -> List[List[float]]:
    values = [float(v) for v in flat]
    return [values[i:i + 4] for i in range(0, len(values) - len(values) % 4, 4)]


def _boxes(text: Any) -> List[List[float]]:
    return [list(map(float, box)) for box in json.loads(text or "[]")]


def image_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset, method, metric/score, image_id): the image's unit (the mean of its
    finite, unflagged values; NaN when every value is flagged or undefined) and its flag."""
    frame = scores[scores["scope"] == "image"]
    frame = frame.assign(label=frame["metric"].astype(str) + "/" + frame["score"].astype(str),
                         used=frame["value"].where((frame["flag"].fillna("") == "") & np.isfinite(frame["value"])))
    return frame.groupby(["model", "dataset", "method", "label", "image_id"], sort=False).agg(
        value=("used", "mean"), flag=("flag", lambda f: next((x for x in f if x), "")),
        higher_is_better=("higher_is_better", "first")).reset_index()


SCRIPT = """
<script>
(function () {
  function show(viewer, index) {
    var panels = viewer.querySelectorAll('.viewer-panel');
    var select = viewer.querySelector('select');
    index = (index + panels.length) % panels.length;
    panels.forEach(function (p, i) { p.style.display = i === index ? '' : 'none'; });
    select.selectedIndex = index;
    viewer.setAttribute('data-shown', panels[index].getAttribute('data-image'));
  }
  document.querySelectorAll('.viewer').forEach(function (viewer) {
    var select = viewer.querySelector('select');
    select.addEventListener('change', function () { show(viewer, select.selectedIndex); });
    viewer.querySelector('.viewer-prev').addEventListener('click', function () { show(viewer, select.selectedIndex - 1); });
    viewer.querySelector('.viewer-next').addEventListener('click', function () { show(viewer, select.selectedIndex + 1); });
    var wanted = decodeURIComponent((location.hash.match(/^#image=(.*)$/) || [])[1] || '');
    var start = 0;
    Array.prototype.forEach.call(select.options, function (o, i) { if (o.value === wanted) { start = i; } });
    show(viewer, start);
    if (wanted && select.options[start].value === wanted) {
      window.addEventListener('load', function () { viewer.scrollIntoView(); });
    }
  });
})();
</script>
"""

CSS = """
.viewer-panel table.vscores td, .viewer-panel table.vscores th { font-size: 12px; }
.viewer-maps { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
.viewer-maps figure { margin: 0; text-align: center; } .viewer-maps figcaption { font-size: 11px; max-width: 150px; }
.viewer-controls { margin: 6px 0; } .viewer-controls select { max-width: 420px; }
"""


def viewer_html(views: pd.DataFrame, scores: pd.DataFrame, spaces: Mapping[str, str], *,
                clip_percentile: Optional[float] = 99.0, max_images: int = VIEWER_IMAGES, digits: int = 3,
                baselines: Sequence[str] = ()) -> str:
    """One viewer per (model, dataset) of ``views`` (the jobs' ``viewer`` tables with ``method``
    already the report's method label), ``scores``: the labelled tidy scores. ``spaces``:
    {method label: "pixel" | "layer"}. At most ``max_images`` images per (model, dataset)."""
    from salbench.reports.gallery import clip_caption, display_scale

    if views.empty:
        return ""
    units = image_scores(scores)
    parts: List[str] = [f"<style>{CSS}</style>"]
    viewer_id = 0
    for (model, dataset), part in views.groupby(["model", "dataset"], sort=False):
        part = part.drop_duplicates(subset=["kind", "method", "image_id"])
        image_rows = part[part["kind"] == "image"].sort_values(["image_index", "image_id"]).head(max_images)
        methods = [m for m in dict.fromkeys(part.loc[part["kind"] == "map", "method"]) if m not in baselines]
        methods += [m for m in dict.fromkeys(part.loc[part["kind"] == "map", "method"]) if m in baselines]
        cell_units = units[(units["model"] == model) & (units["dataset"] == dataset)]
        labels = [label for label, values in cell_units.groupby("label", sort=False)["value"]
                  if values.notna().any()]  # scores with no value for this (model, dataset) are left out
        options, panels = [], []
        for number, image in enumerate(image_rows.itertuples(index=False)):
            picture = _pixels(image)
            gt = _boxes(image.boxes)
            caption = (f"label {image.label_name}, explained class {image.target_name}, predicted "
                       f"{image.predicted_name}")
            cells = [f'<figure>{_svg(_jpeg(picture), image, gt, None, f"image {image.image_id}")}'
                     f"<figcaption>image<br>{html.escape(str(image.label_name))}</figcaption></figure>"]
            maps = part[(part["kind"] == "map") & (part["image_id"] == image.image_id)].set_index("method")
            for method in methods:
                if method not in maps.index:
                    continue
                row = next(maps.loc[[method]].itertuples())
                quantized = _pixels(row).astype(np.float64)
                values = row.low + quantized / 255.0 * (row.high - row.low)
                heat = display_scale(values, spaces.get(method, "pixel"), clip_percentile)
                uri = _jpeg(overlay(picture, heat))
                flag = f" ({row.flag})" if row.flag else ""
                predicted = _boxes(row.boxes)
                cells.append(f'<figure>{_svg(uri, image, gt, predicted[0] if predicted else None, method)}'
                             f"<figcaption>{html.escape(method + flag)}</figcaption></figure>")
            image_units = cell_units[cell_units["image_id"] == image.image_id]
            table = _score_table(image_units, labels, [m for m in methods if m in maps.index], digits)
            options.append(f'<option value="{html.escape(str(image.image_id))}">{number + 1}. '
                           f"{html.escape(str(image.image_id))} ({html.escape(str(image.label_name))})</option>")
            panels.append(f'<div class="viewer-panel" data-image="{html.escape(str(image.image_id))}">'
                          f'<p class="note">{html.escape(caption)}</p><div class="viewer-maps">{"".join(cells)}</div>'
                          f"{table}</div>")
        if not panels:
            continue
        parts.append(
            f'<h3>{html.escape(str(model))} on {html.escape(str(dataset))}</h3>'
            f'<div class="viewer" id="viewer-{viewer_id}">'
            f'<div class="viewer-controls"><button type="button" class="viewer-prev">&larr;</button> '
            f'<select aria-label="image">{"".join(options)}</select> '
            f'<button type="button" class="viewer-next">&rarr;</button> '
            f'<span class="note">{len(panels)} image(s); link one with <code>#image=ID</code></span></div>'
            + "".join(panels) + "</div>"
            + f'<p class="note">White: ground-truth boxes; cyan dashed: the box of each map (pixels >= '
              f"{BOX_THRESHOLD:g} x max, largest component, on the full-resolution map); maps downsampled to at most "
              f"{THUMBNAIL_SIDE} px (area averaging) and stored as uint8 by the job; {clip_caption(clip_percentile)}. "
              "Scores: this image's values (the mean of its rows where a metric scores several classes); best per "
              "row in bold.</p>")
        viewer_id += 1
    if viewer_id == 0:
        return ""
    return "\n".join(parts) + SCRIPT


def _score_table(units: pd.DataFrame, labels: Sequence[str], methods: Sequence[str], digits: int) -> str:
    if not labels or units.empty:
        return ""
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    body = []
    for label in labels:
        part = units[units["label"] == label].set_index("method")
        if part.empty:
            continue
        higher = part["higher_is_better"].dropna()
        values = {m: float(part.loc[m, "value"]) for m in methods if m in part.index}
        finite = {m: v for m, v in values.items() if np.isfinite(v)}
        best = None
        if finite and len(higher):
            target = max(finite.values()) if bool(higher.iloc[0]) else min(finite.values())
            best = {m for m, v in finite.items() if round(v, digits) == round(target, digits)}
        cells = []
        for method in methods:
            if method not in values:
                cells.append("<td>–</td>")
                continue
            value = values[method]
            text = f"{value:.{digits}f}" if np.isfinite(value) else (part.loc[method, "flag"] or "–")
            shown_best = best and method in best and len(best) < len(finite)  # a tie of every method: no bold
            cells.append(f"<td><b>{text}</b></td>" if shown_best else f"<td>{text}</td>")
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    return (f'<table class="vscores"><thead><tr><th>score</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def method_spaces(declared: Mapping[str, Any], labels: Sequence[str]) -> Dict[str, str]:
    """{method label: "pixel" | "layer"} from the runs' declarations (``components.methods[key]
    .space``, key = the label without its ``[options]`` suffix), else the registered class's
    ``space`` (runs recorded before the declaration existed), else ``"pixel"``."""
    from salbench.methods import METHODS

    out = {}
    for label in labels:
        key = str(label).split("[", 1)[0]
        info = (declared.get("methods") or {}).get(key) or {}
        space = info.get("space")
        if space is None:
            try:
                space = getattr(METHODS.get(str(info.get("name", key))), "space", "pixel")
            except KeyError:
                space = "pixel"
        out[label] = space
    return out


def labelled_views(views: pd.DataFrame, raw: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    """``views`` with ``method`` replaced by the report's method label (:func:`label_variants`
    relabels methods run with different options): the label of (run, method) in the scores."""
    if views.empty:
        return views
    mapping = pd.DataFrame({"run": raw["run"].astype(str), "method": raw["method"],
                            "_method_label": labelled["method"]}).drop_duplicates(["run", "method"])
    merged = views.assign(run=views["run"].astype(str)).merge(mapping, on=["run", "method"], how="left")
    merged["method"] = merged["_method_label"].where(merged["_method_label"].notna(), merged["method"])
    return merged.drop(columns="_method_label")


__all__ = ["VIEWER_IMAGES", "THUMBNAIL_SIDE", "STORED_PERCENTILE", "new_state", "collect", "table", "viewer_html",
           "method_spaces", "labelled_views", "image_scores", "quantize_maps", "overlay"]
