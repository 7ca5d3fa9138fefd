"""Figures and the page of an inspection folder (``salbench inspect``, :mod:`salbench.inspection.job`).

Each ``draw_*`` function writes its figures as PNG and PDF (``<stem>.png``, ``<stem>.pdf``),
records each figure's settings in ``figures`` ({stem: settings}, saved in run.json and shown
under the figure) and returns what the page shows of it. :func:`write_page` writes the
self-contained ``index.html`` (inline CSS, figures as base64 ``data:`` URIs, like the report's);
every figure is a ``<figure data-kind="...">`` of one of :data:`FIGURE_KINDS`.
:func:`find_inspections` / :func:`inspection_links` let ``salbench report`` link the inspection
pages found under its paths.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from salbench.harness import store
from salbench.reports import html as page_html
from salbench.reports.plots import _pyplot, save_figure, slug

FIGURE_KINDS = ("filters", "activations", "patches", "class_model", "embeddings", "dissection")
MISSING_GREY = 0.82  # where a receptive field extends past the image


def _settings(section: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(section, resolve=True)
    except ValueError:
        return dict(section)


def _figure(out: Path, fig: Any, stem: str, kind: str, caption: str, settings: Dict[str, Any],
            figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    paths = save_figure(fig, out / stem)
    figures[stem] = {"kind": kind, **settings}
    return {"stem": stem, "kind": kind, "caption": caption, "files": [p.name for p in paths]}


def _rgb(image: Tensor) -> np.ndarray:
    """[3, H, W] (NaN outside the image) -> RGBA [H, W, 4] with those pixels transparent."""
    pixels = image.permute(1, 2, 0).float().numpy()
    outside = np.isnan(pixels).any(2)
    rgba = np.ones(pixels.shape[:2] + (4,), dtype=np.float32)
    rgba[..., :3] = np.nan_to_num(np.clip(pixels, 0, 1), nan=0.0)
    rgba[outside, 3] = 0.0
    return rgba


def _blank(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _minmax(values: Tensor) -> Tensor:
    low, high = values.min(), values.max()
    return (values - low) / (high - low).clamp_min(1e-12)


# --------------------------------------------------------------------------- filters
def draw_filters(out: Path, filters: Dict[str, Any], section: Any, figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The first convolution's filters as RGB images (each filter min-max scaled over its own
    weights) and, per requested layer, each filter's kernels per input channel (grey, the same
    per-filter min-max)."""
    plt = _pyplot()
    drawn = []
    first = filters["first"]
    limit = int(section.max_filters)
    for name, weight in filters["weights"].items():
        shown = weight[:limit]
        if name == first and weight.shape[1] == 3:
            count = shown.shape[0]
            cols = int(math.ceil(math.sqrt(count)))
            rows = int(math.ceil(count / cols))
            fig, axes = plt.subplots(rows, cols, figsize=(0.75 * cols + 0.4, 0.75 * rows + 0.5), squeeze=False)
            for i, ax in enumerate(axes.flat):
                _blank(ax)
                if i < count:
                    ax.imshow(_minmax(shown[i]).permute(1, 2, 0).numpy(), interpolation="nearest")
                    ax.set_title(str(i), fontsize=6, pad=1)
                else:
                    ax.axis("off")
            fig.suptitle(f"{name}: {weight.shape[0]} filters {weight.shape[2]}x{weight.shape[3]} (RGB)", fontsize=9)
            caption = (f"First convolution {name}: each filter's weights [3, {weight.shape[2]}, {weight.shape[3]}] as an "
                       f"RGB image, min-max scaled per filter (its own minimum black, maximum white); "
                       f"{count} of {weight.shape[0]} filters.")
            drawn.append(_figure(out, fig, "filters-first", "filters", caption,
                                 {"layer": name, "scaling": "per-filter min-max over its weights", "filters": count,
                                  "channels": "RGB"}, figures))
            continue
        channels = min(int(section.max_channels), weight.shape[1])
        count = shown.shape[0]
        fig, axes = plt.subplots(count, channels, figsize=(0.55 * channels + 0.8, 0.55 * count + 0.6), squeeze=False)
        for i in range(count):
            scaled = _minmax(shown[i])
            for c in range(channels):
                ax = axes[i, c]
                _blank(ax)
                ax.imshow(scaled[c].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if i == 0:
                    ax.set_title(f"in {c}", fontsize=6, pad=1)
                if c == 0:
                    ax.set_ylabel(str(i), fontsize=6)
        fig.suptitle(f"{name}: filters (rows) x input channels (columns)", fontsize=9)
        stem = f"filters-{slug(name)}"
        caption = (f"Layer {name}: {count} of {weight.shape[0]} filters (rows) per input channel ({channels} of "
                   f"{weight.shape[1]}, columns), grey, min-max scaled per filter over all its weights.")
        drawn.append(_figure(out, fig, stem, "filters", caption,
                             {"layer": name, "scaling": "per-filter min-max over its weights", "filters": count,
                              "channels": channels}, figures))
    return {"figures": drawn}


# --------------------------------------------------------------------------- activations
def draw_activations(out: Path, result: Dict[str, Any], layer: str, class_names: Sequence[str], section: Any,
                     figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per chosen image (rows): the image, then its ``top_k`` channels of ``layer`` by mean
    activation, on one colour scale per image (min to max of its shown maps)."""
    plt = _pyplot()
    images, maps = result["images"], result["maps"]
    count, k = maps.shape[:2]
    fig, axes = plt.subplots(count, k + 1, figsize=(1.25 * (k + 1), 1.35 * count + 0.4), squeeze=False)
    for i in range(count):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        label = result["labels"][i]
        axes[i, 0].set_ylabel(f"#{result['positions'][i]} {class_names[label] if label < len(class_names) else label}",
                              fontsize=7)
        low, high = float(maps[i].min()), float(maps[i].max())
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(maps[i, j].numpy(), cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-6,
                      interpolation="nearest")
            ax.set_title(f"ch {int(result['channels'][i, j])}\nmean {float(result['means'][i, j]):.2f}", fontsize=6, pad=1)
        for ax in axes[i]:
            _blank(ax)
    fig.suptitle(f"{layer}: top-{k} channels by mean activation", fontsize=9)
    caption = (f"Feature maps of {layer} ({tuple(maps.shape[-2:])}) for the chosen images: each row's {k} channels with "
               "the highest mean activation on that image, one colour scale per row (viridis, min to max of its maps).")
    figure = _figure(out, fig, f"activations-{slug(layer)}", "activations", caption,
                     {**_settings(section), "layer": layer, "colour_scale": "shared per image row (min..max)"}, figures)
    return {"figures": [figure]}


# --------------------------------------------------------------------------- patches
def draw_patches(out: Path, top: Dict[str, Tensor], crops: List[List[Optional[Tensor]]], layer: str, field: Any,
                 section: Any, figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Units (rows) x their top-k image patches (columns), each cropped by the unit's receptive
    field; the part of a field outside the image is grey."""
    plt = _pyplot()
    units = top["units"].tolist()
    k = top["positions"].shape[1]
    fig, axes = plt.subplots(len(units), k, figsize=(1.05 * k + 0.6, 1.15 * len(units) + 0.5), squeeze=False)
    for row, unit in enumerate(units):
        for rank in range(k):
            ax = axes[row, rank]
            _blank(ax)
            ax.set_facecolor((MISSING_GREY,) * 3)
            crop = crops[row][rank]
            if crop is None:
                continue
            ax.imshow(_rgb(crop), interpolation="nearest")
            ax.set_title(f"{float(top['values'][row, rank]):.2f} #{int(top['positions'][row, rank])}", fontsize=5.5, pad=1)
            if rank == 0:
                ax.set_ylabel(f"unit {unit}", fontsize=7)
    extent = "the whole image" if field.whole_input else f"{field.size[0]}x{field.size[1]} px, stride {field.jump[0]}"
    fig.suptitle(f"{layer}: top-{k} patches per unit (receptive field {extent})", fontsize=9)
    caption = (f"Maximally activating patches of {layer} (Zeiler & Fergus 2014): for each unit (row), the {k} dataset "
               f"positions with the highest activation{' (one per image)' if section.distinct_images else ''}, cropped "
               f"by the unit's receptive field ({extent}, start {field.start})"
               + ("; grey: the field outside the image (padding)" if section.outside == "pad" else
                  ", clipped to the image") + ". Titles: activation, dataset position.")
    figure = _figure(out, fig, f"patches-{slug(layer)}", "patches", caption,
                     {**_settings(section), "layer": layer, "receptive_field": field.describe(),
                      "units": units}, figures)
    return {"figures": [figure]}


# --------------------------------------------------------------------------- class model
def draw_class_model(out: Path, result: Dict[str, Any], table: pd.DataFrame, class_names: Sequence[str], section: Any,
                     figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The optimized images (one per class) and the class score per step."""
    plt = _pyplot()
    classes = result["classes"].tolist()
    scores = result["scores"]
    settings = {**_settings(section), "classes": classes, "space": "model input (normalized); start = the mean image"}
    count = len(classes)
    cols = min(count, 6)
    rows = int(math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.05 * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _blank(ax)
        if i >= count:
            ax.axis("off")
            continue
        ax.imshow(result["display"][i].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(f"{class_names[classes[i]]}\nS_c {float(scores[0, i]):.1f} -> {float(scores[-1, i]):.1f}", fontsize=7)
    fig.suptitle(f"Class model visualization ({section.steps} steps, {section.optimizer}, lr {section.lr:g}, "
                 f"lambda {section.l2:g})", fontsize=9)
    caption = (f"Class model visualization (Simonyan et al. 2013): argmax_I S_c(I) - lambda ||I||^2 from "
               f"{'the zero (mean) image' if section.init == 'zero' else 'seeded noise'}, {section.steps} steps of "
               f"{section.optimizer} (lr {section.lr:g}), lambda {section.l2:g}, jitter {section.jitter} px, blur sigma "
               f"{section.blur_sigma:g} every {section.blur_every} steps; shown un-normalized, "
               f"{'min-max scaled per image' if section.display == 'minmax' else 'clipped to [0, 1]'}.")
    images = _figure(out, fig, "class_model", "class_model", caption, settings, figures)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, c in enumerate(classes):
        ax.plot(np.arange(scores.shape[0]), scores[:, i].numpy(), label=class_names[c], lw=1.3)
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("class score S_c (logit)")
    ax.grid(alpha=0.3)
    if count <= 12:
        ax.legend(fontsize=7, ncol=2)
    curve = _figure(out, fig, "class_model_scores", "class_model", "Class score of each optimized image per step "
                    "(the un-jittered image; step 0 is the start).", settings, figures)
    start = table[table["step"] == 0].set_index("class_name")["score"]
    end = table[table["step"] == table["step"].max()].set_index("class_name")["score"]
    summary = pd.DataFrame({"score at start": start, "score at end": end})
    return {"figures": [images, curve], "table": summary}


# --------------------------------------------------------------------------- embeddings
def draw_embeddings(out: Path, neighbours: pd.DataFrame, agreement: pd.DataFrame, tsne: pd.DataFrame,
                    images: Dict[int, Tensor], class_names: Sequence[str], settings: Dict[str, Any],
                    figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Each query's nearest neighbours in feature and in pixel space side by side (frame green:
    same label, red: another), and the t-SNE map coloured by class."""
    plt = _pyplot()
    queries = list(dict.fromkeys(neighbours["query_index"]))
    k = int(neighbours["rank"].max()) + 1
    cols = 1 + 2 * k + 1
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.05 * cols, 1.2 * len(queries) + 0.6), squeeze=False)
    for row, query in enumerate(queries):
        for ax in axes[row]:
            _blank(ax)
        axes[row, 0].imshow(images[query].permute(1, 2, 0).clamp(0, 1).numpy())
        label = int(neighbours.loc[neighbours["query_index"] == query, "query_label"].iloc[0])
        axes[row, 0].set_ylabel(f"#{query} {class_names[label]}", fontsize=7)
        axes[row, k + 1].axis("off")
        for offset, space in ((1, "feature"), (k + 2, "pixel")):
            part = neighbours[(neighbours["query_index"] == query) & (neighbours["space"] == space)].sort_values("rank")
            for rank, item in enumerate(part.itertuples()):
                ax = axes[row, offset + rank]
                ax.imshow(images[int(item.neighbour_index)].permute(1, 2, 0).clamp(0, 1).numpy())
                colour = "#1a9850" if item.same_label else "#d73027"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.5)
                if row == 0:
                    ax.set_title(f"{space} {rank + 1}", fontsize=6, pad=1)
    agree = agreement.set_index("space")["agreement"]
    fig.suptitle(f"{k} nearest neighbours: feature space (left, agreement {agree['feature']:.2f}) vs pixel space "
                 f"(right, agreement {agree['pixel']:.2f})", fontsize=9)
    caption = (f"Query images (left column) and their {k} nearest neighbours among {settings['images']} images: in the "
               f"penultimate feature space ({settings['features']}), then in pixel space "
               f"({'area-resized to ' + str(settings['pixel_size']) + ' px' if settings['pixel_size'] else 'input pixels'}), "
               f"{settings['distance']} distance. Frame: green = same label as the query, red = another.")
    drawn = [_figure(out, fig, "embeddings-neighbours", "embeddings", caption, settings, figures)]
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    labels = sorted(tsne["label"].unique())
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for i, label in enumerate(labels):
        part = tsne[tsne["label"] == label]
        ax.scatter(part["x"], part["y"], s=14, color=cmap(i % cmap.N), label=class_names[int(label)], alpha=0.85,
                   edgecolors="none")
    _blank(ax)
    if len(labels) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title("t-SNE of the penultimate features, coloured by class", fontsize=9)
    tsne_settings = settings["tsne"]
    drawn.append(_figure(out, fig, "embeddings-tsne", "embeddings",
                         f"t-SNE (van der Maaten & Hinton 2008; scikit-learn, perplexity {tsne_settings['perplexity']:g}, "
                         f"PCA init, seed {tsne_settings['random_state']}) of the penultimate features of "
                         f"{len(tsne)} images, coloured by class.", settings, figures))
    return {"figures": drawn, "table": agreement.set_index("space")}


# --------------------------------------------------------------------------- dissection
def draw_dissection(out: Path, table: pd.DataFrame, units: pd.DataFrame, summary: pd.DataFrame, settings: Dict[str, Any],
                    figures: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per layer: the detectors (units whose best concept's IoU exceeds the threshold) stacked by
    concept, and the best IoU per concept."""
    plt = _pyplot()
    layers = list(dict.fromkeys(summary["layer"]))
    concepts = list(dict.fromkeys(summary["concept"]))
    cmap = plt.get_cmap("tab10" if len(concepts) <= 10 else "tab20")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    bottom = np.zeros(len(layers))
    best = table.groupby(["layer", "concept"], sort=False)["iou"].max()
    width = 0.8 / max(1, len(concepts))
    for i, concept in enumerate(concepts):
        counts = np.array([int(summary[(summary["layer"] == layer) & (summary["concept"] == concept)]["detectors"].sum())
                           for layer in layers])
        left.bar(np.arange(len(layers)), counts, bottom=bottom, color=cmap(i % cmap.N), label=concept)
        bottom += counts
        values = [float(best.get((layer, concept), 0.0)) for layer in layers]
        right.bar(np.arange(len(layers)) - 0.4 + width * (i + 0.5), values, width=width, color=cmap(i % cmap.N),
                  label=concept)
    threshold = settings["iou_threshold"]
    for ax in (left, right):
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels(layers, rotation=20, fontsize=7, ha="right")
        ax.grid(axis="y", alpha=0.3)
    left.set_ylabel(f"units with best IoU > {threshold:g}")
    left.set_title("detectors per layer (by best concept)", fontsize=9)
    right.axhline(threshold, color="k", ls="--", lw=0.8)
    right.set_ylabel("best IoU over units")
    right.set_title("best unit IoU per concept", fontsize=9)
    if len(concepts) <= 20:
        right.legend(fontsize=7, ncol=2)
    caption = (f"Network Dissection (Bau et al. 2017): each unit's activations thresholded at their top "
               f"{settings['quantile']:g} quantile over the dataset ({settings['threshold_method']} level), upsampled "
               f"({settings['upsample']}) to the masks, IoU with each concept's masks summed over "
               f"{settings['images']} images (concepts from {', '.join(settings['concept_source'])}). Left: units whose "
               f"best concept has IoU > {threshold:g}; right: the best IoU of each concept in each layer.")
    figure = _figure(out, fig, "dissection", "dissection", caption, settings, figures)
    per_layer = summary.groupby("layer", sort=False).agg(units=("units", "first"), detectors=("detectors", "sum"))
    return {"figures": [figure], "table": per_layer,
            "concepts": summary.pivot_table(index="layer", columns="concept", values="detectors", sort=False)}


# --------------------------------------------------------------------------- page
def _figure_html(out: Path, item: Dict[str, Any], settings: Dict[str, Any]) -> str:
    png = out / f"{item['stem']}.png"
    return (f'<figure data-kind="{html.escape(item["kind"])}"><img src="{page_html.data_uri(png)}" '
            f'alt="{html.escape(item["caption"])}"><figcaption>{html.escape(item["caption"])} (files: '
            f'{", ".join(html.escape(f) for f in item["files"])})</figcaption>'
            f"<details><summary>settings</summary><pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>"
            "</details></figure>")


def _table_html(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.{digits}f}", border=0, classes="runs")


SECTIONS = (("filters", "Filters"), ("activations", "Activations"), ("patches", "Maximally activating patches"),
            ("class_model", "Class model visualization"), ("embeddings", "Embeddings"),
            ("dissection", "Network Dissection"))


def write_page(out: Path, page: Dict[str, Any], run_info: Dict[str, Any]) -> Path:
    """``index.html`` of an inspection folder: one section per kind of picture, its tables and
    each figure's settings."""
    figures = run_info.get("figures", {})
    sections = []
    fields = page.get("receptive_fields")
    overview = [f"<p>Model <code>{html.escape(str(page['model']))}</code> on <code>{html.escape(str(page['dataset']))}"
                f"</code> ({page['num_images']} images); inspection <code>{html.escape(str(run_info.get('job_id')))}"
                f"</code>, seed {html.escape(str(run_info.get('seed')))}, device "
                f"<code>{html.escape(str((run_info.get('device') or {}).get('device')))}</code>.</p>"]
    if fields is not None:
        overview.append("<h3>Receptive fields of the inspected layers</h3><p class=\"note\">Unit (i, j) covers input "
                        "rows start_h + i jump_h ... + size_h - 1 (columns alike), traced through the network "
                        "(Araujo et al. 2019).</p>" + _table_html(fields.set_index("layer")))
    sections.append(("Overview", "\n".join(overview)))
    for key, heading in SECTIONS:
        part = page.get(key)
        if not part:
            continue
        body = [_figure_html(out, item, figures.get(item["stem"], {})) for item in part["figures"]]
        if key == "embeddings":
            agree = part["table"]["agreement"]
            body.insert(0, f"<p>Neighbour label agreement (share of the k nearest neighbours with the query's label, "
                           f"mean over images): <b>feature space {agree['feature']:.3f}</b>, pixel space "
                           f"{agree['pixel']:.3f}.</p>")
        if part.get("table") is not None:
            body.append(_table_html(part["table"]))
        if part.get("concepts") is not None:
            body.append("<h3>Detectors per layer and concept</h3>" + _table_html(part["concepts"], digits=0))
        sections.append((heading, "\n".join(body)))
    config = json.dumps(run_info.get("config", {}), indent=1, default=str)
    sections.append(("Settings", f"<details><summary>resolved config</summary><pre>{html.escape(config)}</pre></details>"))
    text = page_html.page(f"salbench inspection: {page['model']} on {page['dataset']}", sections)
    store.write_text(out / "index.html", text)
    for path in out.iterdir():
        if path.is_file() and path.suffix in (".png", ".pdf", ".html", ".parquet"):
            os.chmod(path, 0o644)  # atomic writes create 0600 temporaries; the folder is meant to be shared
    return out / "index.html"


# --------------------------------------------------------------------------- links from `salbench report`
def find_inspections(paths: Sequence[Any]) -> List[Path]:
    """Inspection folders (run.json ``kind == "inspection"`` with an ``index.html``) under ``paths``."""
    found: List[Path] = []
    for path in (Path(p) for p in paths):
        candidates = [path / "run.json"] if (path / "run.json").exists() else []
        candidates += sorted(path.rglob("run.json")) if path.is_dir() else []
        for run_json in dict.fromkeys(candidates):
            try:
                info = json.loads(run_json.read_text())
            except (OSError, ValueError):
                continue
            if info.get("kind") == "inspection" and (run_json.parent / "index.html").exists() \
                    and run_json.parent not in found:
                found.append(run_json.parent)
    return found


def inspection_links(paths: Sequence[Any], out: Path) -> str:
    """HTML list linking each inspection page under ``paths`` (relative to the report folder)."""
    items = []
    for folder in find_inspections(paths):
        info = json.loads((folder / "run.json").read_text())
        config = info.get("config", {})
        link = os.path.relpath(folder.resolve() / "index.html", Path(out).resolve())
        name = f"{(config.get('model') or {}).get('name', '?')} on {(config.get('dataset') or {}).get('name', '?')}"
        items.append(f'<li><a href="{html.escape(link)}">{html.escape(name)}</a> ({html.escape(str(folder))}, '
                     f'{html.escape(str(info.get("status")))})</li>')
    return f"<ul>{''.join(items)}</ul>" if items else ""
