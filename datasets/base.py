"""Sample and batch format shared by every dataset, and the dataset base class.

A sample is a dict:

* ``image``: FloatTensor [3, H, W], RGB in [0, 1], at the model's input size (not normalized:
  normalization travels with the model, see :class:`salbench.models.bundle.ModelBundle`);
* ``label``: int, the class to explain (the primary class for multi-label datasets);
* ``boxes``: FloatTensor [N, 4] ``(x0, y0, x1, y1)`` inclusive pixel coordinates in the input
  frame (N may be 0); ``box_labels``: LongTensor [N]; ``difficult``: BoolTensor [N];
* ``mask``: BoolTensor [H, W] or None (object pixels); ``ignore``: BoolTensor [H, W] or None;
* ``orig_size``: ``(height, width)`` of the image on disk; ``orig_boxes``: FloatTensor [N, 4]
  in the original frame; ``image_id``: str.

Optional keys: ``frame``: ``{"scale": (sx, sy), "offset": (ox, oy)}`` such that continuous input
coordinates are ``orig * scale - offset`` (see :func:`transform_sample`); ``cells``: grid cells;
``class_masks``: BoolTensor [M, H, W] with ``class_mask_labels`` LongTensor [M], one mask per
class present (multi-label datasets with segmentations, e.g. COCO; collated into
``batch.extras["class_masks"]`` / ``["class_mask_labels"]``, None for samples without).

Skips: a sample whose image or annotation is missing or corrupt makes ``load`` raise
:class:`SkipSample`; ``__getitem__`` then returns a *skip record*
``{"skip": reason, "image_id": ..., "index": ...}`` instead of a sample, and :func:`collate`
drops skip records from the batch and lists them in ``batch.extras["skipped"]`` (a batch can
be empty: ``len(batch) == 0``). Nothing is skipped silently: every reason reaches the runner.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

ImageSize = Union[int, Sequence[int], None]


class SkipSample(Exception):
    """Raised by ``load`` for a sample that cannot be read (missing or corrupt image or
    annotation). ``reason`` is a short human-readable string recorded in the run summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_skip(sample: Dict[str, Any]) -> bool:
    """Whether ``sample`` is a skip record (see the module docstring)."""
    return "skip" in sample


@dataclass
class Batch:
    """A collated batch. ``images`` [B, 3, H, W] in [0, 1]; ``labels`` [B]; per-image lists for
    the variable-length fields."""

    images: Tensor
    labels: Tensor
    boxes: List[Tensor]
    box_labels: List[Tensor]
    difficult: List[Tensor]
    masks: Optional[Tensor]  # [B, H, W] bool, or None when no sample has a mask
    ignore: Optional[Tensor]
    orig_sizes: List[Tuple[int, int]]
    orig_boxes: List[Tensor]
    image_ids: List[str]
    indices: Tensor  # [B] position of each sample in the dataset
    extras: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``; host-to-GPU copies are asynchronous (a copy to the CPU never
        is: its data could be read before it arrived)."""
        asynchronous = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=asynchronous))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (the DataLoader calls this with ``pin_memory=True``),
        so that :meth:`to` overlaps the copy to the GPU with work already queued."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Any) -> "Batch":
        def apply(value: Any) -> Any:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, list) and value and isinstance(value[0], Tensor):
                return [fn(v) for v in value]
            return value

        return Batch(**{name: apply(getattr(self, name)) for name in self.__dataclass_fields__})

    def select(self, rows: Sequence[int]) -> "Batch":
        """The batch of samples ``rows`` (positions in this batch, repeats allowed), e.g. one row
        per (image, class) pair. Per-sample extras are selected too; ``extras["skipped"]`` stays
        with the original batch (the selection is empty there)."""
        rows = [int(r) for r in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.images.device)

        def pick(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.index_select(0, index.to(value.device))
            if isinstance(value, list):
                return [value[r] for r in rows]
            return value

        extras = {key: (pick(value) if key != "skipped" and isinstance(value, (list, Tensor))
                        and len(value) == len(self) else value)
                  for key, value in self.extras.items()}
        extras["skipped"] = []
        fields = {name: pick(getattr(self, name)) for name in self.__dataclass_fields__ if name != "extras"}
        return Batch(**fields, extras=extras)


def _stack_optional(samples: Sequence[Dict[str, Any]], key: str) -> Optional[Tensor]:
    if all(s.get(key) is None for s in samples):
        return None
    height, width = samples[0]["image"].shape[-2:]
    return torch.stack(
        [s[key] if s.get(key) is not None else torch.zeros(height, width, dtype=torch.bool) for s in samples]
    )


def collate(samples: Sequence[Dict[str, Any]]) -> Batch:
    """Collate sample dicts (see the module docstring) into a :class:`Batch`.

    Skip records are dropped and listed in ``extras["skipped"]`` as
    ``{"image_id", "index", "reason"}`` dicts; the optional per-sample ``class_masks`` /
    ``class_mask_labels`` go to the extras of the same names. An all-skipped batch has ``len(batch) == 0``.
    """
    skipped = [
        {"image_id": str(s.get("image_id", "")), "index": int(s.get("index", -1)), "reason": str(s["skip"])}
        for s in samples
        if is_skip(s)
    ]
    samples = [s for s in samples if not is_skip(s)]
    if not samples:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(
            images=torch.zeros(0, 3, 0, 0), labels=empty, boxes=[], box_labels=[], difficult=[], masks=None,
            ignore=None, orig_sizes=[], orig_boxes=[], image_ids=[], indices=empty, extras={"skipped": skipped},
        )
    extras: Dict[str, Any] = {"skipped": skipped}
    for key in ("class_masks", "class_mask_labels"):
        if any(key in s for s in samples):
            extras[key] = [s.get(key) for s in samples]
    empty_boxes = torch.zeros(0, 4)
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        labels=torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        boxes=[s.get("boxes", empty_boxes).float() for s in samples],
        box_labels=[
            s.get("box_labels", torch.full((len(s.get("boxes", empty_boxes)),), int(s["label"]))).long()
            for s in samples
        ],
        difficult=[
            s.get("difficult", torch.zeros(len(s.get("boxes", empty_boxes)), dtype=torch.bool)) for s in samples
        ],
        masks=_stack_optional(samples, "mask"),
        ignore=_stack_optional(samples, "ignore"),
        orig_sizes=[tuple(s.get("orig_size", s["image"].shape[-2:])) for s in samples],
        orig_boxes=[s.get("orig_boxes", s.get("boxes", empty_boxes)).float() for s in samples],
        image_ids=[str(s["image_id"]) for s in samples],
        indices=torch.tensor([int(s.get("index", i)) for i, s in enumerate(samples)], dtype=torch.long),
        extras=extras,
    )


class LocalizationDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``load(index) -> sample dict``.

    ``limit`` keeps the first ``limit`` samples; ``shard`` / ``num_shards`` keep every
    ``num_shards``-th sample starting at ``shard`` (applied after ``limit``), so shards of a
    sweep partition the dataset. ``class_names`` lists the dataset's classes (index = label).

    ``annotations``: the ground truth the samples carry (``("boxes",)``, ``()`` for labels only).

    ``load`` may raise :class:`SkipSample`; ``__getitem__`` turns it into a skip record and counts
    the reason in ``skipped`` (a Counter of reasons; in-process only: with DataLoader workers,
    count the records in ``batch.extras["skipped"]`` instead).
    """

    class_names: List[str] = []
    # the ground truth its samples carry ("boxes", "masks"); () for a dataset of labels only
    # (imagefolder): the job refuses localization metrics on it instead of scoring empty boxes
    annotations: Tuple[str, ...] = ("boxes",)

    def __init__(self, limit: Optional[int] = None, shard: int = 0, num_shards: int = 1):
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"need 0 <= shard < num_shards; got shard={shard}, num_shards={num_shards}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        self.limit, self.shard, self.num_shards = limit, shard, num_shards
        self.skipped: Counter = Counter()

    def num_items(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Dict[str, Any]:
        raise NotImplementedError

    def _positions(self) -> range:
        total = self.num_items() if self.limit is None else min(self.limit, self.num_items())
        return range(self.shard, total, self.num_shards)

    def __len__(self) -> int:
        return len(self._positions())

    def __getitem__(self, position: int) -> Dict[str, Any]:
        index = self._positions()[position]
        try:
            sample = self.load(index)
        except SkipSample as skip:
            self.skipped[skip.reason] += 1
            return {"skip": skip.reason, "image_id": self.image_id(index), "index": index}
        sample.setdefault("index", index)
        return sample

    def image_id(self, index: int) -> str:
        """The id of item ``index`` without loading it (used in skip records)."""
        return str(index)

    def fingerprint(self) -> str:
        """A cheap fingerprint of the files this dataset reads (part of a job's identity, so an
        edited annotation or replaced image makes a completed job run again): every file under
        each folder the dataset holds as a ``Path`` attribute (its root, image and mask folders)
        and every file it holds as a ``Path`` (its annotation tables) by relative path, size and
        modification time, plus the content hash of annotation-like files (text, CSV, JSON, XML
        up to 64 MB); a dataset it wraps (the grid's source) is fingerprinted with it. A dataset
        that reads no file (the synthetic shapes) has the fingerprint of its options alone.
        A dataset whose root holds much more than it reads narrows :meth:`fingerprint_paths`."""
        return files_fingerprint(self.fingerprint_paths())

    def fingerprint_paths(self) -> List[Path]:
        """The files and folders :meth:`fingerprint` covers (default: :func:`dataset_paths`)."""
        return dataset_paths(self)


ANNOTATION_SUFFIXES = (".csv", ".txt", ".json", ".xml", ".tsv")
HASHED_BYTES = 64 * 2**20


def dataset_paths(dataset: Any) -> List[Path]:
    """The ``Path`` attributes (and lists / dicts of them) of a dataset and of the datasets it
    wraps, in attribute order, each once."""
    found: List[Path] = []

    def visit(value: Any, depth: int = 0) -> None:
        if isinstance(value, Path):
            if value not in found:
                found.append(value)
        elif isinstance(value, (list, tuple)) and depth < 2 and value and isinstance(value[0], Path):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, LocalizationDataset) and depth < 2:
            for item in vars(value).values():
                visit(item, depth + 1)

    for value in vars(dataset).values():
        visit(value)
    return found


def files_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over every file under ``paths`` (folders walked recursively): relative path, size,
    mtime in ns, and for annotation-like files (:data:`ANNOTATION_SUFFIXES`, at most 64 MB) the
    content hash. Missing paths count as missing."""
    import hashlib
    import os

    digest = hashlib.sha256()
    for base in paths:
        base = Path(base)
        if not base.exists():
            digest.update(f"missing {base}\n".encode())
            continue
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            stat = os.stat(path)
            relative = path.name if path == base else path.relative_to(base).as_posix()
            digest.update(f"{base.name}/{relative}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            if path.suffix.lower() in ANNOTATION_SUFFIXES and stat.st_size <= HASHED_BYTES:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- file boundary
def input_size(image_size: ImageSize, default: Tuple[int, int] = (224, 224)) -> Tuple[int, int]:
    """``image_size`` (int, (H, W) or None) as ``(H, W)``; None keeps ``default``."""
    if image_size is None:
        return default
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = (int(v) for v in image_size)
    return (height, width)


# integer modes wider than 8 bits, and the full-scale value their data is divided by
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB. 16-bit grey (``I;16*``, and ``I``: 32-bit integer holding 16-bit
    data, as PIL opens 16-bit PNG and TIFF) is scaled by 255 / 65535 and rounded, not clipped at
    255 (PIL's ``convert("RGB")`` would turn it white); float ``F`` images are taken as [0, 1]
    and scaled by 255. Palette (``P``) images go through their palette; an alpha channel
    (``RGBA``, ``LA``, ``PA``) is dropped: the stored colours are used as they are, not
    composited on a background; ``CMYK`` / ``YCbCr`` / ``L`` / ``1`` convert as PIL converts."""
    if image.mode in WIDE_MODES or image.mode == "F":
        data = np.asarray(image, dtype=np.float64)
        scale = 255.0 if image.mode == "F" else 255.0 / WIDE_MODES[image.mode]
        grey = np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def read_image(path: Union[str, Path]) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (:func:`to_rgb`); a missing or unreadable file raises
    :class:`SkipSample`."""
    path = Path(path)
    if not path.is_file():
        raise SkipSample(f"missing image: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise SkipSample(f"corrupt image: {path}: {error}") from None


def read_table(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """(header, rows as dicts) of a CSV file, column names stripped: UTF-8 with or without a
    byte-order mark (Excel's "CSV UTF-8"); another encoding is a ValueError naming the file."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
            header = [(k or "").strip() for k in (reader.fieldnames or [])]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 ({error.reason} at byte {error.start}); save it as UTF-8 "
                         "(e.g. Excel's 'CSV UTF-8')") from None
    return header, rows


def read_mask(path: Union[str, Path], threshold: int = 127) -> np.ndarray:
    """A mask file (any PIL mode) as bool [H, W]: grey value > ``threshold``; missing or corrupt
    raises :class:`SkipSample`."""
    path = Path(path)
    if not path.is_file():
        raise SkipSample(f"missing mask: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > threshold
    except (OSError, SyntaxError, ValueError) as error:
        raise SkipSample(f"corrupt mask: {path}: {error}") from None


def check_boxes(boxes: np.ndarray, width: int, height: int, where: str = "") -> np.ndarray:
    """Clip inclusive boxes [N, 4] to the image; an inverted or fully outside box raises
    :class:`SkipSample` (a corrupt annotation)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise SkipSample(f"corrupt annotation{where}: non-finite box")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    bad |= (boxes[:, 0] > width - 1) | (boxes[:, 1] > height - 1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if bad.any():
        raise SkipSample(f"corrupt annotation{where}: box {boxes[bad][0].tolist()} outside a {width}x{height} image")
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - 1)
    return boxes


def transform_boxes(boxes: Tensor, scale: Tuple[float, float], offset: Tuple[float, float], size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """Map inclusive pixel boxes [N, 4] from the original frame to the input frame.

    A pixel ``i`` covers ``[i, i + 1)``; resizing by ``scale = (sx, sy)`` then cropping at
    ``offset = (ox, oy)`` maps the extent ``[x0, x1 + 1)`` to ``[x0 * sx - ox, (x1 + 1) * sx - ox)``,
    so the new inclusive box is ``(x0 * sx - ox, y0 * sy - oy, (x1 + 1) * sx - ox - 1, ...)``
    clipped to the ``size = (H, W)`` frame (a whole-image box stays a whole-image box).
    Returns (boxes [M, 4], keep [N] bool): boxes entirely outside the crop are dropped.
    """
    (sx, sy), (ox, oy), (height, width) = scale, offset, size
    boxes = boxes.float().reshape(-1, 4)
    x0 = boxes[:, 0] * sx - ox
    y0 = boxes[:, 1] * sy - oy
    x1 = (boxes[:, 2] + 1) * sx - ox - 1
    y1 = (boxes[:, 3] + 1) * sy - oy - 1
    out = torch.stack([x0.clamp(0, width - 1), y0.clamp(0, height - 1), x1.clamp(0, width - 1), y1.clamp(0, height - 1)], 1)
    keep = (x1 >= 0) & (y1 >= 0) & (x0 <= width - 1) & (y0 <= height - 1)
    return out[keep], keep


MASK_RESAMPLES = ("pil_nearest", "cv2_nearest")


def cv2_nearest_indices(source: int, target: int) -> np.ndarray:
    """The source index of each of ``target`` output pixels under cv2 ``INTER_NEAREST``:
    ``min(floor(i * (1 / (target / source))), source - 1)`` in float64, as OpenCV's
    ``resizeNN`` (PIL's NEAREST samples pixel centres instead: ``floor((i + 0.5) * source / target)``)."""
    step = 1.0 / (float(target) / float(source))
    return np.minimum(np.floor(np.arange(target, dtype=np.float64) * step).astype(np.int64), source - 1)


def resize_mask(mask: np.ndarray, size: Tuple[int, int], resample: str = "pil_nearest") -> np.ndarray:
    """bool mask [h, w] -> bool [H, W] at ``size = (H, W)`` by nearest neighbour: ``pil_nearest``
    (PIL's NEAREST, pixel centres) or ``cv2_nearest`` (cv2 ``INTER_NEAREST``: source pixel
    ``floor(i * scale)``, wsolevaluation's mask rule)."""
    if resample not in MASK_RESAMPLES:
        raise ValueError(f"unknown mask resample {resample!r}; valid: {', '.join(MASK_RESAMPLES)}")
    height, width = size
    if resample == "cv2_nearest":
        rows, cols = cv2_nearest_indices(mask.shape[0], height), cv2_nearest_indices(mask.shape[1], width)
        return np.asarray(mask, bool)[np.ix_(rows, cols)]
    picture = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(picture) > 127


def transform_sample(
    image: Image.Image,
    boxes: np.ndarray,
    size: Tuple[int, int],
    crop_fraction: Optional[float] = None,
    mask: Optional[np.ndarray] = None,
    ignore: Optional[np.ndarray] = None,
    class_masks: Optional[Sequence[np.ndarray]] = None,
    mask_resample: str = "pil_nearest",
) -> Dict[str, Any]:
    """Resize an RGB image (and its boxes and masks) to the input ``size = (H, W)``.

    ``crop_fraction=None``: resize the whole image to ``size`` (aspect ratio not kept; the
    wsolevaluation protocol). ``crop_fraction=f``: resize to ``size / f`` (e.g. 256 for 224 at
    0.875), then take the centre ``size`` crop (the torchvision / TF evaluation protocol).
    Images use bilinear interpolation, masks nearest neighbour (``mask_resample``: PIL's pixel
    centres, or cv2's ``floor(i * scale)`` rule, :func:`resize_mask`).

    Returns ``image`` [3, H, W] float in [0, 1], ``boxes`` [M, 4], ``keep`` [N] bool (boxes
    inside the crop), ``mask`` / ``ignore`` bool [H, W] or None, ``class_masks`` bool
    [M, H, W] (when given: M masks in the original frame) and the ``frame`` dict.
    """
    height, width = size
    orig_w, orig_h = image.size
    if crop_fraction is None:
        resized_h, resized_w = height, width
    else:
        if not 0 < crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1]; got {crop_fraction}")
        resized_h, resized_w = round(height / crop_fraction), round(width / crop_fraction)
    oy, ox = (resized_h - height) // 2, (resized_w - width) // 2
    scale = (resized_w / orig_w, resized_h / orig_h)

    def fit(picture: Image.Image, resample: int) -> Image.Image:
        picture = picture.resize((resized_w, resized_h), resample)
        return picture.crop((ox, oy, ox + width, oy + height)) if crop_fraction is not None else picture

    def fit_mask(key: str, value: np.ndarray) -> Tensor:
        if value.shape != (orig_h, orig_w):
            raise SkipSample(f"corrupt annotation: {key} of shape {value.shape} for a {orig_w}x{orig_h} image")
        resized = resize_mask(value, (resized_h, resized_w), mask_resample)
        if crop_fraction is not None:
            resized = resized[oy:oy + height, ox:ox + width]
        return torch.from_numpy(np.ascontiguousarray(resized))

    pixels = np.asarray(fit(image, Image.BILINEAR), dtype=np.float32) / 255.0
    out: Dict[str, Any] = {"image": torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()}
    out["boxes"], out["keep"] = transform_boxes(torch.as_tensor(boxes, dtype=torch.float32), scale, (ox, oy), size)
    for key, value in (("mask", mask), ("ignore", ignore)):
        out[key] = None if value is None else fit_mask(key, value)
    if class_masks is not None:
        out["class_masks"] = torch.stack([fit_mask("class mask", np.asarray(m, bool)) for m in class_masks]) \
            if len(class_masks) else torch.zeros(0, height, width, dtype=torch.bool)
    out["frame"] = {"scale": scale, "offset": (ox, oy)}
    return out


@dataclass
class Record:
    """One image's annotation in the original frame, as parsed from disk.

    ``boxes`` [N, 4] inclusive pixel coordinates; ``box_labels`` [N]; ``difficult`` [N];
    ``mask`` / ``ignore``: a mask file path, a list of paths (union), a bool array [H, W], or None.
    ``class_masks``: optional ``{class: bool array [H, W]}``, one mask per class present.
    """

    image_id: str
    path: Path
    label: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: Optional[np.ndarray] = None
    difficult: Optional[np.ndarray] = None
    mask: Any = None
    ignore: Any = None
    class_masks: Optional[Dict[int, np.ndarray]] = None


class ImageRecordDataset(LocalizationDataset):
    """Base for on-disk datasets: a subclass lists images (``num_items``, ``image_id``) and parses
    each one's annotation into a :class:`Record` (``record(index)``, which may raise
    :class:`SkipSample`); this class reads the image and masks and applies the resize / crop.

    ``image_size``: the input size (int or (H, W); None: 224); ``crop_fraction``: None resizes
    the whole image, a fraction in (0, 1] resizes to ``size / fraction`` and centre-crops.
    Class attributes: ``mask_resample`` (:func:`resize_mask`), ``mask_threshold`` (a mask file's
    grey value above which a pixel is foreground).
    """

    mask_resample = "pil_nearest"
    mask_threshold = 127

    def __init__(self, image_size: ImageSize = None, crop_fraction: Optional[float] = None, **selection: Any):
        super().__init__(**selection)  # limit, shard, num_shards
        self.size = input_size(image_size)
        self.crop_fraction = crop_fraction

    def record(self, index: int) -> Record:
        raise NotImplementedError

    def _read_masks(self, spec: Any, height: int, width: int) -> Optional[np.ndarray]:
        if spec is None:
            return None
        if isinstance(spec, np.ndarray):
            return spec.astype(bool)
        paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
        masks = [read_mask(p, self.mask_threshold) for p in paths]
        for path, mask in zip(paths, masks):
            if mask.shape != (height, width):
                raise SkipSample(f"corrupt annotation: mask {path} is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
        return np.logical_or.reduce(masks)

    def load(self, index: int) -> Dict[str, Any]:
        rec = self.record(index)
        image = read_image(rec.path)
        width, height = image.size
        where = f" for {rec.image_id}"
        boxes = check_boxes(rec.boxes, width, height, where)
        count = len(boxes)
        box_labels = np.full(count, rec.label) if rec.box_labels is None else np.asarray(rec.box_labels)
        difficult = np.zeros(count, bool) if rec.difficult is None else np.asarray(rec.difficult, bool)
        mask = self._read_masks(rec.mask, height, width)
        ignore = self._read_masks(rec.ignore, height, width)
        if mask is not None and ignore is not None:
            ignore = ignore & ~mask  # object pixels are never ignored
        classes = sorted(rec.class_masks) if rec.class_masks is not None else None
        out = transform_sample(image, boxes, self.size, self.crop_fraction, mask, ignore,
                               class_masks=None if classes is None else [rec.class_masks[c] for c in classes],
                               mask_resample=self.mask_resample)
        keep = out.pop("keep")
        if classes is not None:
            out["class_mask_labels"] = torch.tensor(classes, dtype=torch.long)
        return {
            **out,
            "label": int(rec.label),
            "box_labels": torch.as_tensor(box_labels, dtype=torch.long)[keep],
            "difficult": torch.as_tensor(difficult, dtype=torch.bool)[keep],
            "orig_size": (height, width),
            "orig_boxes": torch.from_numpy(boxes)[keep],
            "image_id": rec.image_id,
        }


def dataset_root(root: Optional[str], dataset: str, expected: str) -> Path:
    """``root`` as a Path; None (the configs' default) is an error that says what to point it at."""
    if root is None:
        raise ValueError(f"{dataset}: set root to your local copy ({expected}); see docs/datasets.md")
    return Path(root).expanduser()
