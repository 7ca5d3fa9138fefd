"""``salbench inspect``: one inspection of a model on a dataset, written into its output folder.

Stages, each recorded in the checkpoint when done (a killed job resumes after the last finished
stage, and inside a dataset pass after its last flushed chunk of images):

1. ``filters``: the first convolution's weights (and the ``layers`` asked for), no data;
2. ``class_model``: gradient ascent on the input, one image per class, no data;
3. ``activations``: one forward pass of the chosen images;
4. pass ``scan`` over the dataset (one forward per batch, every layer captured at once): the
   patches' running top-k, the embeddings' features and pixels, the dissection thresholds (the
   exact top-m buffers, or the histogram method's ranges);
5. pass ``histogram`` (only with ``dissection.threshold=histogram``): the bucket counts;
6. pass ``dissection``: the IoU counters of every unit and concept;
7. tables, figures and the page (:mod:`salbench.reports.inspection`).

Outputs (``OUTPUT_DIR/``): ``run.json`` (``kind: inspection``, config, identity, status, versions,
device, every figure's settings), tidy tables (``filters``, ``activations``, ``patches``,
``receptive_fields``, ``class_model``, ``neighbours``, ``embedding_agreement``, ``tsne``,
``dissection``, ``dissection_units``, ``dissection_layers``: ``<name>.parquet``), figures
(``<name>.png`` + ``<name>.pdf``) and ``index.html``. A folder whose run.json says ``completed``
for the same identity (a hash of the config without progress / resume / workers / flush size,
and the salbench version) is not computed again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from salbench.datasets import collate
from salbench.harness import store
from salbench.harness.allocator import set_malloc
from salbench.harness.plugins import load_plugins, loaded_plugins
from salbench.harness.runner import PROJECT_ROOT, build_dataset, resolve_device, seed_everything
from salbench.harness.schema import options_of
from salbench.inspection import class_model as class_model_lib
from salbench.inspection import dissection as dissection_lib
from salbench.inspection import embeddings as embeddings_lib
from salbench.inspection.config import validate_inspection
from salbench.inspection.layers import capture_input, capture_layers, first_convolution, head_name, penultimate, resolve_layers
from salbench.inspection.patches import TopActivations
from salbench.inspection.receptive_field import crop_box, crop_patch, receptive_fields
from salbench.methods.hooks import find_module
from salbench.models import ModelBundle, create_model

IDENTITY_EXCLUDES = ("progress", "resume", "num_workers", "flush_every", "malloc")
CHECKPOINT = "checkpoint.pt"
KIND = "inspection"


def inspection_id(cfg: DictConfig) -> str:
    """A hash of the resolved config (without the settings that change no result) and the
    salbench version."""
    from salbench import __version__

    config = OmegaConf.to_container(cfg, resolve=True)
    for key in IDENTITY_EXCLUDES:
        config.pop(key, None)
    blob = json.dumps({"config": config, "salbench": __version__, "kind": KIND}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoint
class StageCheckpoint:
    """``checkpoint.pt``: the results of finished stages and the state of the running pass
    (``{"stage", "done", "consumers"}``), each save atomic."""

    def __init__(self, output_dir: Path, identity: str):
        self.path = Path(output_dir) / CHECKPOINT
        self.identity = identity
        self.finished: Dict[str, Any] = {}
        self.running: Optional[Dict[str, Any]] = None

    @classmethod
    def load(cls, output_dir: Path, identity: str, device: torch.device, resume: bool = True) -> "StageCheckpoint":
        checkpoint = cls(output_dir, identity)
        if resume and checkpoint.path.exists():
            saved = torch.load(checkpoint.path, map_location=device, weights_only=False)
            if saved.get("job_id") == identity:
                checkpoint.finished, checkpoint.running = saved["finished"], saved["running"]
        return checkpoint

    def _save(self) -> None:
        with store.atomic_path(self.path) as tmp:
            torch.save({"job_id": self.identity, "finished": self.finished, "running": self.running}, tmp)

    def finish(self, stage: str, result: Any) -> Any:
        self.finished[stage] = result
        self.running = None
        self._save()
        return result

    def progress(self, stage: str, done: int, consumers: Dict[str, Any]) -> None:
        self.running = {"stage": stage, "done": done, "consumers": consumers}
        self._save()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- dataset passes
@dataclass
class PassStep:
    """What one batch of a dataset pass gives its consumers (everything on the device)."""

    batch: Any
    positions: Tensor  # [B] dataset positions
    activations: Dict[str, Tensor]  # layer -> [B, C, h, w]
    head_input: Optional[Tensor] = None  # [B, D] penultimate features
    logits: Optional[Tensor] = None


class Consumer:
    """Something a dataset pass feeds: the ``layers`` it reads, whether it reads the head's
    input, how many of the first images it needs (None: all) and ``update(step)``."""

    layers: Sequence[str] = ()
    needs_head = False
    images_needed: Optional[int] = None

    def update(self, step: PassStep) -> None:
        raise NotImplementedError


class PatchConsumer(Consumer):
    def __init__(self, layer: str, units: Sequence[int], k: int, distinct_images: bool):
        self.layers = [layer]
        self.top = TopActivations(units, k, distinct_images)

    def update(self, step: PassStep) -> None:
        self.top.update(step.activations[self.layers[0]], step.positions)


class EmbeddingConsumer(Consumer):
    needs_head = True

    def __init__(self, max_images: int, pixel_size: Optional[int]):
        self.images_needed, self.pixel_size = int(max_images), pixel_size
        self.features: List[Tensor] = []
        self.pixels: List[Tensor] = []
        self.labels: List[Tensor] = []
        self.positions: List[Tensor] = []

    def update(self, step: PassStep) -> None:
        keep = step.positions < self.images_needed
        if not bool(keep.any()):
            return
        self.features.append(penultimate(step.head_input)[keep].float())
        self.pixels.append(embeddings_lib.pixel_vectors(step.batch.images[keep], self.pixel_size))
        self.labels.append(step.batch.labels.to(step.positions.device)[keep])
        self.positions.append(step.positions[keep])


class ThresholdConsumer(Consumer):
    """One dissection layer's threshold, pass 1: the exact buffer or the histogram's range."""

    def __init__(self, layer: str, method: str, quantile: float, planned_maps: int, bins: int, max_megabytes: float):
        self.layers = [layer]
        self.method = method
        self.quantile = (dissection_lib.ExactQuantile(quantile, planned_maps, max_megabytes) if method == "exact"
                         else dissection_lib.HistogramQuantile(quantile, bins))

    def update(self, step: PassStep) -> None:
        values = step.activations[self.layers[0]]
        if self.method == "exact":
            self.quantile.update(values)
        else:
            self.quantile.observe_range(values)


class HistogramConsumer(Consumer):
    def __init__(self, layer: str, quantile: "dissection_lib.HistogramQuantile"):
        self.layers = [layer]
        self.quantile = quantile

    def update(self, step: PassStep) -> None:
        self.quantile.observe_counts(step.activations[self.layers[0]])


class IoUConsumer(Consumer):
    def __init__(self, layer: str, accumulator: "dissection_lib.IoUAccumulator", concepts: str):
        self.layers = [layer]
        self.accumulator, self.concepts = accumulator, concepts
        self.sources: List[str] = []

    def update(self, step: PassStep) -> None:
        masks, concepts, source = dissection_lib.concept_masks(step.batch, self.concepts)
        if source not in self.sources:
            self.sources.append(source)
        self.accumulator.update(step.activations[self.layers[0]], masks, concepts)


def collate_positions(samples: List[Dict[str, Any]]) -> Any:
    """:func:`salbench.datasets.collate` plus ``extras["positions"]``: the dataset position of
    each kept sample (skip records included in ``extras["skipped"]`` as usual)."""
    batch = collate(samples)
    batch.extras["positions"] = torch.tensor([s["_position"] for s in samples if "skip" not in s], dtype=torch.long)
    return batch


class _Positioned(torch.utils.data.Dataset):
    """A dataset whose samples carry their position (``_position``)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> Dict[str, Any]:
        return {**self.dataset[position], "_position": position}


@dataclass
class Inspection:
    """The built pieces every stage reads."""

    cfg: DictConfig
    bundle: ModelBundle
    dataset: Any
    device: torch.device
    output_dir: Path
    checkpoint: StageCheckpoint
    run_info: Dict[str, Any]
    figures: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def section(self) -> Any:
        return self.cfg.inspect

    def dataset_pass(self, stage: str, consumers: Dict[str, Consumer]) -> Dict[str, Consumer]:
        """Run the dataset through the model once for ``consumers`` (resuming a checkpointed
        pass), or return the consumers of a finished one."""
        if stage in self.checkpoint.finished:
            return self.checkpoint.finished[stage]
        running = self.checkpoint.running
        done = 0
        if running is not None and running.get("stage") == stage:
            consumers, done = running["consumers"], int(running["done"])
            print(f"salbench inspect: resuming pass {stage!r} after {done} images")
        needed = [c.images_needed for c in consumers.values()]
        stop = len(self.dataset) if any(n is None for n in needed) else min(len(self.dataset), max(needed, default=0))
        layers = list(dict.fromkeys(layer for c in consumers.values() for layer in c.layers))
        head = head_name(self.bundle.module, tuple(self.bundle.input_size)) if any(
            c.needs_head for c in consumers.values()) else None
        loader = DataLoader(Subset(_Positioned(self.dataset), range(done, stop)), batch_size=int(self.cfg.batch_size),
                            shuffle=False, num_workers=int(self.cfg.num_workers), collate_fn=collate_positions,
                            pin_memory=self.device.type == "cuda")
        flush_every = max(int(self.cfg.flush_every), 1)
        since_flush = 0
        progress = tqdm(total=stop, initial=done, desc=f"inspect {stage}", unit="img", disable=not self.cfg.progress,
                        mininterval=1.0)
        module = self.bundle.module
        for batch in loader:
            step_size = len(batch) + len(batch.extras.get("skipped", []))
            if len(batch):
                batch = batch.to(self.device)
                positions = batch.extras["positions"].to(self.device)
                inputs = self.bundle.normalize(batch.images)
                with torch.no_grad(), capture_layers(module, layers) as captured:
                    if head is not None:
                        with capture_input(module, head) as head_capture:
                            logits = module(inputs)
                        head_input = head_capture.value
                    else:
                        logits, head_input = module(inputs), None
                    step = PassStep(batch=batch, positions=positions,
                                    activations={name: c.activation for name, c in captured.items()},
                                    head_input=head_input, logits=logits)
                    for consumer in consumers.values():
                        consumer.update(step)
            done += step_size
            since_flush += step_size
            progress.update(step_size)
            if since_flush >= flush_every and done < stop:
                self.checkpoint.progress(stage, done, consumers)
                since_flush = 0
        progress.close()
        return self.checkpoint.finish(stage, consumers)

    def stage(self, name: str, compute: Any) -> Any:
        if name in self.checkpoint.finished:
            return self.checkpoint.finished[name]
        return self.checkpoint.finish(name, compute())

    def sample(self, position: int) -> Dict[str, Any]:
        if not 0 <= position < len(self.dataset):
            raise ValueError(f"dataset position {position} is outside the dataset's {len(self.dataset)} images "
                             f"(valid: 0..{len(self.dataset) - 1})")
        sample = self.dataset[position]
        if "skip" in sample:
            raise ValueError(f"dataset position {position} cannot be read: {sample['skip']}")
        return sample


# --------------------------------------------------------------------------- stages
def filters_stage(job: Inspection) -> Dict[str, Any]:
    """The first convolution's weights [C_out, C_in, k, k] and those of ``filters.layers``."""
    section = job.section.filters
    module = job.bundle.module
    first = first_convolution(module, tuple(job.bundle.input_size))
    weights = {first: find_module(module, first).weight.detach().float().cpu()}
    for name in section.layers:
        layer = find_module(module, name)
        if not isinstance(layer, torch.nn.Conv2d):
            raise ValueError(f"inspect.filters.layers: {name!r} is a {type(layer).__name__}, not an nn.Conv2d")
        weights[name] = layer.weight.detach().float().cpu()
    return {"first": first, "weights": weights}


def class_model_stage(job: Inspection, classes: List[int]) -> Dict[str, Any]:
    section = job.section.class_model
    result = class_model_lib.class_model_visualization(
        job.bundle.module, classes, job.bundle.input_size, steps=int(section.steps), lr=float(section.lr),
        l2=float(section.l2), optimizer=section.optimizer, init=section.init, init_std=float(section.init_std),
        jitter=int(section.jitter), blur_sigma=float(section.blur_sigma), blur_every=int(section.blur_every),
        seed=int(job.cfg.seed), device=job.device)
    display = class_model_lib.display_images(result.images, job.bundle.mean, job.bundle.std, section.display)
    return {"classes": result.classes.cpu(), "images": result.images.cpu(), "display": display.cpu(),
            "scores": result.scores.cpu(), "objectives": result.objectives.cpu()}


def activations_stage(job: Inspection, layer: str) -> Dict[str, Any]:
    """The chosen images' maps of ``layer``: the ``top_k`` channels of each image by mean activation."""
    section = job.section.activations
    positions = [int(p) for p in section.images]
    samples = [job.sample(p) for p in positions]
    images = torch.stack([s["image"] for s in samples]).to(job.device)
    with torch.no_grad(), capture_layers(job.bundle.module, [layer]) as captured:
        job.bundle.module(job.bundle.normalize(images))
    maps = captured[layer].activation.float()
    means = maps.mean((2, 3))  # [n, C]
    k = min(int(section.top_k), maps.shape[1])
    top = means.topk(k, dim=1)
    chosen = maps.gather(1, top.indices[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
    return {"positions": positions, "image_ids": [s["image_id"] for s in samples],
            "labels": [int(s["label"]) for s in samples], "images": images.cpu(), "channels": top.indices.cpu(),
            "means": top.values.cpu(), "maxima": chosen.flatten(2).max(2).values.cpu(), "maps": chosen.cpu()}


def default_classes(job: Inspection) -> List[int]:
    """The distinct labels of the dataset's first images, up to ``class_model.max_classes``."""
    section = job.section.class_model
    if section.classes is not None:
        bad = [c for c in section.classes if not 0 <= int(c) < job.bundle.num_classes]
        if bad:
            raise ValueError(f"inspect.class_model.classes: class {bad[0]} is outside the model's "
                             f"{job.bundle.num_classes} classes (valid: 0..{job.bundle.num_classes - 1})")
        return [int(c) for c in section.classes]
    found: List[int] = []
    for position in range(len(job.dataset)):
        sample = job.dataset[position]
        if "skip" not in sample and int(sample["label"]) not in found:
            found.append(int(sample["label"]))
        if len(found) >= int(section.max_classes) or len(found) >= job.bundle.num_classes:
            break
    return sorted(found)


def patch_crops(job: Inspection, top: Dict[str, Tensor], field: Any) -> Tuple[List[List[Optional[Tensor]]], Dict[int, str]]:
    """The winners' receptive-field crops [3, h, w] per unit and rank (the field clipped to the
    image, ``outside=clip``, or the whole field, NaN outside the image, ``outside=pad``) and the
    winners' image ids by dataset position."""
    cache: Dict[int, Dict[str, Any]] = {}
    crops: List[List[Optional[Tensor]]] = []
    for unit_row in range(top["positions"].shape[0]):
        row: List[Optional[Tensor]] = []
        for rank in range(top["positions"].shape[1]):
            position = int(top["positions"][unit_row, rank])
            if position < 0:
                row.append(None)
                continue
            if position not in cache:
                cache[position] = job.sample(position)
            image = cache[position]["image"]
            height, width = image.shape[-2:]
            x0, y0, x1, y1 = crop_box(field, int(top["rows"][unit_row, rank]), int(top["cols"][unit_row, rank]),
                                      (height, width))
            if job.section.patches.outside == "clip":
                x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
            row.append(crop_patch(image, (x0, y0, x1, y1)))
        crops.append(row)
    return crops, {position: sample["image_id"] for position, sample in cache.items()}


# --------------------------------------------------------------------------- tables
def filter_table(filters: Dict[str, Any]) -> pd.DataFrame:
    rows = []
    for layer, weight in filters["weights"].items():
        flat = weight.flatten(1)
        for index in range(weight.shape[0]):
            rows.append({"layer": layer, "filter": index, "in_channels": weight.shape[1], "kernel_h": weight.shape[2],
                         "kernel_w": weight.shape[3], "min": float(flat[index].min()), "max": float(flat[index].max()),
                         "l2_norm": float(flat[index].norm()), "first_convolution": layer == filters["first"]})
    return pd.DataFrame(rows)


def class_model_table(result: Dict[str, Any], class_names: Sequence[str], l2: float) -> pd.DataFrame:
    scores, objectives = result["scores"].double().numpy(), result["objectives"].double().numpy()
    steps, count = scores.shape
    classes = result["classes"].tolist()
    return pd.DataFrame({
        "class_index": np.tile(classes, steps), "class_name": np.tile([class_names[c] for c in classes], steps),
        "step": np.repeat(np.arange(steps), count), "score": scores.reshape(-1), "objective": objectives.reshape(-1),
        "l2": l2,
    })


def activations_table(result: Dict[str, Any], layer: str) -> pd.DataFrame:
    rows = []
    for i, position in enumerate(result["positions"]):
        for rank, channel in enumerate(result["channels"][i].tolist()):
            rows.append({"image_index": position, "image_id": result["image_ids"][i], "layer": layer, "rank": rank,
                         "channel": channel, "mean": float(result["means"][i, rank]),
                         "max": float(result["maxima"][i, rank])})
    return pd.DataFrame(rows)


def patches_table(top: Dict[str, Tensor], layer: str, field: Any, image_ids: Dict[int, str], image_size: Sequence[int]) -> pd.DataFrame:
    rows = []
    for row, unit in enumerate(top["units"].tolist()):
        for rank in range(top["positions"].shape[1]):
            position = int(top["positions"][row, rank])
            if position < 0:
                continue
            y, x = int(top["rows"][row, rank]), int(top["cols"][row, rank])
            x0, y0, x1, y1 = crop_box(field, y, x, tuple(image_size))
            rows.append({"layer": layer, "unit": unit, "rank": rank, "activation": float(top["values"][row, rank]),
                         "image_index": position, "image_id": image_ids.get(position), "row": y, "col": x,
                         "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return pd.DataFrame(rows)


def _write_table(job: Inspection, name: str, frame: pd.DataFrame, written: List[str]) -> None:
    store.write_parquet(job.output_dir / f"{name}.parquet", frame)
    written.append(f"{name}.parquet")


# --------------------------------------------------------------------------- the job
def run_inspection(cfg: DictConfig, output_dir: Path) -> Dict[str, Any]:
    """Run the inspection described by ``cfg`` into ``output_dir``; returns its run.json content.
    With ``resume``, a folder completed for the same identity is left as it is."""
    output_dir = Path(output_dir)
    cfg = cfg.copy()
    load_plugins(cfg.get("plugins") or [])  # before validation: their models and datasets are options
    validate_inspection(cfg)
    identity = inspection_id(cfg)
    previous = _previous_run(output_dir)
    if cfg.get("resume", True) and previous.get("job_id") == identity and previous.get("status") == "completed" \
            and (output_dir / "index.html").exists():
        print(f"salbench inspect: {identity} already completed in {output_dir}; skipping (resume=false redoes it)")
        return previous
    if previous.get("job_id") not in (None, identity) or not cfg.get("resume", True):
        (output_dir / CHECKPOINT).unlink(missing_ok=True)
    run_info: Dict[str, Any] = {
        "kind": KIND, "job_id": identity, "status": "running", "started": datetime.now(timezone.utc).isoformat(),
        "seed": cfg.seed, "config": OmegaConf.to_container(cfg, resolve=True), "versions": store.package_versions(),
        "git_commit": store.git_commit(PROJECT_ROOT), "plugins": loaded_plugins(),
        "attempts": int(previous.get("attempts", 0)) + 1 if previous.get("job_id") == identity else 1,
    }
    store.write_json(output_dir / "run.json", run_info)
    clock = time.perf_counter()
    try:
        _inspect(cfg, output_dir, run_info)
    except BaseException as error:
        run_info.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                        ended=datetime.now(timezone.utc).isoformat())
        store.write_json(output_dir / "run.json", run_info)
        raise
    run_info.update(status="completed", ended=datetime.now(timezone.utc).isoformat(),
                    seconds=round(time.perf_counter() - clock, 3))
    store.write_json(output_dir / "run.json", run_info)
    (output_dir / CHECKPOINT).unlink(missing_ok=True)
    return run_info


def _previous_run(output_dir: Path) -> Dict[str, Any]:
    try:
        return json.loads((output_dir / "run.json").read_text()) if (output_dir / "run.json").exists() else {}
    except json.JSONDecodeError:
        return {}


def _inspect(cfg: DictConfig, output_dir: Path, run_info: Dict[str, Any]) -> None:
    from salbench.reports import inspection as drawing

    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.device)
    allocator = set_malloc(cfg.get("malloc", "retain"))  # process-wide, before the first forward pass
    run_info["device"] = {**store.device_info(device), "malloc": allocator}
    bundle = create_model(cfg.model.name, **options_of(cfg.model)).to(device)
    run_info["model"] = bundle.describe()
    dataset = build_dataset(cfg, bundle)
    run_info["dataset"] = {"name": cfg.dataset.name, "num_images": len(dataset)}
    checkpoint = StageCheckpoint.load(output_dir, run_info["job_id"], device, resume=bool(cfg.get("resume", True)))
    job = Inspection(cfg=cfg, bundle=bundle, dataset=dataset, device=device, output_dir=output_dir,
                     checkpoint=checkpoint, run_info=run_info)
    section = cfg.inspect
    size = tuple(bundle.input_size)
    class_names = list(getattr(dataset, "class_names", None) or bundle.class_names)
    model_class_names = list(bundle.class_names)
    tables: List[str] = []
    page: Dict[str, Any] = {"model": bundle.name, "dataset": cfg.dataset.name, "num_images": len(dataset)}

    def resolve(names: Sequence[str]) -> List[str]:
        return resolve_layers(bundle.module, list(names), size, bundle.target_layer)

    patch_layer = resolve([section.patches.layer])[0] if section.patches.enabled else None
    activation_layer = resolve([section.activations.layer])[0] if section.activations.enabled else None
    dissection_layers = resolve(section.dissection.layers) if section.dissection.enabled else []
    field_layers = list(dict.fromkeys([n for n in (patch_layer, activation_layer) if n] + dissection_layers))
    fields = receptive_fields(bundle.module, size, field_layers, device) if field_layers else {}
    if fields:
        frame = pd.DataFrame([{"layer": name, **field.describe()} for name, field in fields.items()])
        _write_table(job, "receptive_fields", frame, tables)
        page["receptive_fields"] = frame

    # 1. filters
    if section.filters.enabled:
        filters = job.stage("filters", lambda: filters_stage(job))
        _write_table(job, "filters", filter_table(filters), tables)
        page["filters"] = drawing.draw_filters(job.output_dir, filters, section.filters, job.figures)

    # 2. class model visualization
    if section.class_model.enabled:
        classes = default_classes(job)
        result = job.stage("class_model", lambda: class_model_stage(job, classes))
        table = class_model_table(result, model_class_names, float(section.class_model.l2))
        _write_table(job, "class_model", table, tables)
        page["class_model"] = drawing.draw_class_model(job.output_dir, result, table, model_class_names,
                                                       section.class_model, job.figures)

    # 3. activations of the chosen images
    if section.activations.enabled:
        result = job.stage("activations", lambda: activations_stage(job, activation_layer))
        _write_table(job, "activations", activations_table(result, activation_layer), tables)
        page["activations"] = drawing.draw_activations(job.output_dir, result, activation_layer, class_names,
                                                       section.activations, job.figures)

    # 4. the scan pass: patches, embeddings, thresholds
    consumers: Dict[str, Consumer] = {}
    if section.patches.enabled:
        patches = section.patches
        units = list(patches.units) if patches.units is not None else None
        if units is None:
            with torch.no_grad(), capture_layers(bundle.module, [patch_layer]) as captured:
                bundle.module(torch.zeros(1, 3, *size, device=device))
            units = list(range(min(int(patches.num_units), captured[patch_layer].activation.shape[1])))
        consumers["patches"] = PatchConsumer(patch_layer, units, int(patches.top_k), bool(patches.distinct_images))
    if section.embeddings.enabled:
        consumers["embeddings"] = EmbeddingConsumer(int(section.embeddings.max_images), section.embeddings.pixel_size)
    dissection = section.dissection
    for layer in dissection_layers:
        consumers[f"threshold:{layer}"] = ThresholdConsumer(layer, dissection.threshold, float(dissection.quantile),
                                                            len(dataset), int(dissection.histogram_bins),
                                                            float(dissection.max_megabytes))
    scanned = job.dataset_pass("scan", consumers) if consumers else {}

    if section.patches.enabled:
        top = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in scanned["patches"].top.result().items()}
        field = fields[patch_layer]
        crops, ids = patch_crops(job, top, field)
        _write_table(job, "patches", patches_table(top, patch_layer, field, ids, size), tables)
        page["patches"] = drawing.draw_patches(job.output_dir, top, crops, patch_layer, field, section.patches,
                                               job.figures)

    # 5. embeddings: neighbours and t-SNE
    if section.embeddings.enabled:
        page["embeddings"] = embeddings_outputs(job, scanned["embeddings"], class_names, tables, drawing)

    # 6. dissection: (histogram pass), IoU pass
    if dissection_layers:
        thresholds = {layer: scanned[f"threshold:{layer}"].quantile for layer in dissection_layers}
        if dissection.threshold == "histogram":
            counted = job.dataset_pass("histogram", {f"histogram:{layer}": HistogramConsumer(
                layer, copy.deepcopy(thresholds[layer])) for layer in dissection_layers})
            thresholds = {layer: counted[f"histogram:{layer}"].quantile for layer in dissection_layers}
        levels = {layer: quantile.thresholds() for layer, quantile in thresholds.items()}
        num_concepts = len(class_names)
        iou_consumers = {f"iou:{layer}": IoUConsumer(layer, dissection_lib.IoUAccumulator(
            levels[layer].to(device), num_concepts, dissection.upsample, bool(dissection.align_corners)),
            dissection.concepts) for layer in dissection_layers}
        counted = job.dataset_pass("dissection", iou_consumers)
        page["dissection"] = dissection_outputs(job, counted, levels, dissection_layers, class_names, tables, drawing)

    run_info["tables"] = tables
    run_info["figures"] = job.figures
    run_info["layers"] = {"patches": patch_layer, "activations": activation_layer, "dissection": dissection_layers}
    drawing.write_page(job.output_dir, page, run_info)
    _remove_stale_outputs(output_dir, tables, job.figures)
    run_info["outputs"] = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith(".")
                                 and p.name != CHECKPOINT)
    print(f"salbench inspect: {bundle.name} on {cfg.dataset.name} ({len(dataset)} images): {output_dir.resolve() / 'index.html'}")


TABLES = ("receptive_fields", "filters", "class_model", "activations", "patches", "embedding_agreement", "neighbours",
          "tsne", "dissection", "dissection_units", "dissection_layers")
FIGURE_PREFIXES = ("filters-", "activations-", "patches-", "class_model", "embeddings-", "dissection")


def _remove_stale_outputs(output_dir: Path, tables: Sequence[str], figures: Dict[str, Any]) -> None:
    """Remove the tables and figures an earlier config wrote into this folder and this one did not."""
    for path in output_dir.iterdir():
        stale_table = path.suffix == ".parquet" and path.stem in TABLES and path.name not in tables
        stale_figure = path.suffix in (".png", ".pdf") and path.stem.startswith(FIGURE_PREFIXES) and path.stem not in figures
        if stale_table or stale_figure:
            path.unlink()


def embeddings_outputs(job: Inspection, collected: EmbeddingConsumer, class_names: Sequence[str], tables: List[str],
                       drawing: Any) -> Dict[str, Any]:
    section = job.section.embeddings
    features = torch.cat(collected.features)
    pixels = torch.cat(collected.pixels)
    labels = torch.cat(collected.labels)
    positions = torch.cat(collected.positions)
    count = len(positions)
    k = min(int(section.k), count - 1)
    if k < 1:
        raise ValueError(f"embeddings need at least 2 images; the dataset gave {count}")
    lookup = {int(p): i for i, p in enumerate(positions.tolist())}
    missing = [q for q in section.queries if int(q) not in lookup]
    if missing:
        raise ValueError(f"inspect.embeddings.queries: position {missing[0]} is not among the {count} images embedded "
                         f"(the first embeddings.max_images={section.max_images} readable images)")
    query_rows = torch.tensor([lookup[int(q)] for q in section.queries], dtype=torch.long)
    spaces = {"feature": features, "pixel": pixels}
    agreement_rows, neighbour_rows, found = [], [], {}
    for space, vectors in spaces.items():
        everyone, distances = embeddings_lib.nearest_neighbours(vectors, k, metric=section.distance)
        agreement_rows.append({"space": space, "k": k, "agreement": embeddings_lib.label_agreement(everyone, labels),
                               "images": count, "dimensions": int(vectors.shape[1]), "distance": section.distance})
        chosen = everyone[query_rows.to(everyone.device)].cpu()
        chosen_distance = distances[query_rows.to(distances.device)].cpu()
        found[space] = chosen
        for q, row in enumerate(query_rows.tolist()):
            for rank in range(k):
                other = int(chosen[q, rank])
                neighbour_rows.append({"space": space, "query_index": int(positions[row]), "rank": rank,
                                       "neighbour_index": int(positions[other]), "distance": float(chosen_distance[q, rank]),
                                       "query_label": int(labels[row]), "neighbour_label": int(labels[other]),
                                       "same_label": bool(labels[row] == labels[other])})
    agreement = pd.DataFrame(agreement_rows)
    neighbours = pd.DataFrame(neighbour_rows)
    coordinates, tsne_settings = embeddings_lib.tsne_map(features, seed=int(job.cfg.seed),
                                                         perplexity=float(section.tsne_perplexity),
                                                         iterations=int(section.tsne_iterations))
    tsne = pd.DataFrame({"image_index": positions.cpu().numpy(), "label": labels.cpu().numpy(),
                         "class_name": [class_names[int(c)] for c in labels.tolist()],
                         "x": coordinates[:, 0], "y": coordinates[:, 1]})
    _write_table(job, "embedding_agreement", agreement, tables)
    _write_table(job, "neighbours", neighbours, tables)
    _write_table(job, "tsne", tsne, tables)
    images = {}
    for position in set(neighbours["query_index"]).union(neighbours["neighbour_index"]):
        images[int(position)] = job.sample(int(position))["image"]
    settings = {"k": k, "distance": section.distance, "pixel_size": section.pixel_size, "images": count,
                "features": f"input of the head {head_name(job.bundle.module, tuple(job.bundle.input_size))!r}",
                "tsne": tsne_settings}
    return drawing.draw_embeddings(job.output_dir, neighbours, agreement, tsne, images, class_names, settings, job.figures)


def dissection_outputs(job: Inspection, counted: Dict[str, IoUConsumer], levels: Dict[str, Tensor], layers: List[str],
                       class_names: Sequence[str], tables: List[str], drawing: Any) -> Dict[str, Any]:
    section = job.section.dissection
    frames = []
    sources: List[str] = []
    for layer in layers:
        consumer = counted[f"iou:{layer}"]
        present = torch.nonzero(consumer.accumulator.area > 0).flatten().tolist()
        frames.append(dissection_lib.dissection_rows(layer, consumer.accumulator.iou(), present, class_names))
        sources += [s for s in consumer.sources if s not in sources]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", "unit", "concept", "iou"])
    thresholds = {layer: levels[layer].detach().cpu().numpy() for layer in layers}
    units = dissection_lib.unit_summary(table, thresholds, float(section.iou_threshold))
    summary = dissection_lib.layer_summary(table, units, float(section.iou_threshold))
    _write_table(job, "dissection", table, tables)
    _write_table(job, "dissection_units", units, tables)
    _write_table(job, "dissection_layers", summary, tables)
    settings = {"quantile": float(section.quantile), "iou_threshold": float(section.iou_threshold),
                "threshold_method": section.threshold, "upsample": section.upsample,
                "align_corners": bool(section.align_corners), "concept_source": sources,
                "histogram_bins": int(section.histogram_bins) if section.threshold == "histogram" else None,
                "images": len(job.dataset)}
    return drawing.draw_dissection(job.output_dir, table, units, summary, settings, job.figures)


def inspect_main(cfg: DictConfig) -> None:
    """``salbench inspect`` under Hydra: the job's output directory is Hydra's run directory."""
    from hydra.core.hydra_config import HydraConfig

    run_inspection(cfg, Path(HydraConfig.get().runtime.output_dir))
