"""torchvision's ImageFolder layout: one sub-folder per class, labels only (no boxes)::

    root/<class folder>/<any/relative/path>.jpg

Images: every file with one of torchvision's image extensions (``IMAGE_EXTENSIONS``) under a
class folder, recursively (hidden files and folders skipped), class folders in sorted order,
files in sorted order within each; image id = the path relative to ``root``.

Labels (each folder's class index), explicitly:

* ``class_index=FILE`` (wins when given): a JSON object ``{"folder": class}`` (class: an index or
  a class name of the model), or ImageNet's ``imagenet_class_index.json`` (``{"0": ["n01440764",
  "tench"], ...}``: folder = the first item, class = the key); or a text/CSV file of ``folder,class``
  lines (or ``folder class``); or one folder name a line (line i = class i). Every folder must be
  listed;
* ``labels=match`` (default): the folder name is a class name of the model (its bundle's
  ``class_names``) or an integer class index (the rules of :class:`salbench.datasets.folder.LabelMatcher`);
* ``labels=sorted``: torchvision's ``ImageFolder`` rule: class i = the i-th folder in sorted
  order (how a model fine-tuned with ``torchvision.datasets.ImageFolder`` numbers its classes);
  the folder count must equal the model's class count.

A folder that matches nothing is an error listing the unmatched folders and the valid names.
The dataset has no ground truth (``annotations = ()``): metrics that need boxes or masks (the
localization metrics) are refused for it with a clear error; faithfulness, robustness,
complexity and sanity metrics need none.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, dataset_root
from salbench.datasets.folder import LabelMatcher

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LABEL_RULES = ("match", "sorted")


def read_class_index(path: Path) -> Dict[str, str]:
    """{folder: class as written (an index or a name)} of a class-index file (module docstring)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{folder: class}} or {{index: [folder, name]}}")
        if data and all(str(k).strip().isdigit() and isinstance(v, list) and v for k, v in data.items()):
            return {str(v[0]): str(k).strip() for k, v in data.items()}  # imagenet_class_index.json
        return {str(k): str(v) for k, v in data.items()}
    mapping: Dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for number, line in enumerate(lines):
        parts = [p.strip() for p in (line.split(",") if "," in line else line.split(None, 1))]
        if len(parts) == 1:
            mapping[parts[0]] = str(number)  # one folder a line: line i = class i
        else:
            mapping[parts[0]] = parts[1]
    return mapping


@register_dataset("imagefolder")
class ImageFolder(ImageRecordDataset):
    """Images in class sub-folders of ``root`` (module docstring); ``labels``: ``match`` |
    ``sorted``; ``class_index``: a folder -> class file; ``model``: the job's bundle (the loop
    passes it: its class names are the vocabulary)."""

    needs_model = True
    annotations: Tuple[str, ...] = ()

    def __init__(self, root: Optional[str] = None, labels: str = "match", class_index: Optional[str] = None,
                 model: Any = None, **common: Any):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        if labels not in LABEL_RULES:
            raise ValueError(f"unknown labels {labels!r}; valid: {', '.join(LABEL_RULES)}")
        self.root = dataset_root(root, "imagefolder", "a folder with one sub-folder of images per class")
        if not self.root.is_dir():
            raise FileNotFoundError(f"imagefolder: {self.root} is not a folder")
        self.labels = labels
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"imagefolder: {self.root} has no class sub-folders (root/<class>/<image>)")
        model_names = list(getattr(model, "class_names", None) or []) or None
        self.class_index_path = None
        if class_index:
            path = Path(class_index).expanduser()
            self.class_index_path = path = path if path.is_absolute() or path.exists() else self.root / path
            if not path.is_file():
                raise FileNotFoundError(f"imagefolder: class index file not found: {path}")
            written = read_class_index(path)
            unlisted = [f for f in folders if f not in written]
            if unlisted:
                raise ValueError(f"imagefolder: {len(unlisted)} folder(s) are not in {path}: "
                                 f"{', '.join(repr(f) for f in unlisted[:10])}")
            self.folder_class = self._match({f: written[f] for f in folders}, model_names, str(path))
        elif labels == "sorted":
            if model_names is not None and len(folders) != len(model_names):
                raise ValueError(f"imagefolder: labels=sorted numbers the {len(folders)} folders 0..{len(folders) - 1}, "
                                 f"but the model has {len(model_names)} classes")
            self.folder_class = {f: i for i, f in enumerate(folders)}
        else:
            self.folder_class = self._match({f: f for f in folders}, model_names, "the folder names")
        self.class_names = list(model_names) if model_names is not None else self._names(folders)
        self.items: List[Tuple[str, int]] = []
        for folder in folders:
            for directory, subfolders, files in os.walk(self.root / folder, followlinks=True):
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                        relative = (Path(directory) / name).relative_to(self.root).as_posix()
                        self.items.append((relative, self.folder_class[folder]))
        if not self.items:
            raise ValueError(f"imagefolder: no image ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}'s class folders")

    def _match(self, written: Dict[str, str], names: Optional[List[str]], source: str) -> Dict[str, int]:
        """{folder: class index} through :class:`LabelMatcher` (a model class name or an index)."""
        matcher = LabelMatcher(names, len(names) if names is not None else None)
        out: Dict[str, int] = {}
        unmatched = []
        for folder, value in written.items():
            try:
                index = matcher.match(value)
            except KeyError:
                index = None
            if index is None:
                unmatched.append(folder)
            else:
                out[folder] = index
        if unmatched:
            valid = f"the model's class names ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}) or " \
                if names else ""
            raise ValueError(
                f"imagefolder: {len(unmatched)} folder(s) of {self.root} match no class through {source}: "
                f"{', '.join(repr(f) for f in unmatched[:10])}; valid: {valid}integer indices 0.."
                f"{(len(names) - 1) if names else 'K-1'}; or give a class index file (class_index=FILE) or "
                "labels=sorted (torchvision ImageFolder's numbering)")
        return out

    def _names(self, folders: List[str]) -> List[str]:
        """Without a model: class i's name is the folder of class i (the index when several or none)."""
        count = max(self.folder_class.values()) + 1
        names = [str(i) for i in range(count)]
        for folder, index in self.folder_class.items():
            if list(self.folder_class.values()).count(index) == 1:
                names[index] = folder
        return names

    def num_items(self) -> int:
        return len(self.items)

    def image_id(self, index: int) -> str:
        return self.items[index][0]

    def record(self, index: int) -> Record:
        relative, label = self.items[index]
        return Record(image_id=relative, path=self.root / relative, label=label)
