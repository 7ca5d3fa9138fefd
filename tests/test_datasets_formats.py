"""Every dataset reader against small fixture trees in its exact on-disk format: each loaded box,
label and mask is compared with hand-computed values, in the original frame and after resize/crop;
a missing or corrupt image or annotation is a recorded skip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salbench.datasets import collate, create_dataset, is_skip
from salbench.datasets.base import transform_boxes, transform_sample


def write_image(path: Path, width: int, height: int, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def write_corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def write_mask(path: Path, width: int, height: int, rect) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = rect
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return mask


def resized(box, sx, sy, ox=0.0, oy=0.0):
    """Reference for the inclusive-extent box mapping (see transform_boxes)."""
    x0, y0, x1, y1 = box
    return [x0 * sx - ox, y0 * sy - oy, (x1 + 1) * sx - ox - 1, (y1 + 1) * sy - oy - 1]


def valid(dataset):
    return [dataset[i] for i in range(len(dataset)) if not is_skip(dataset[i])]


def skips(dataset):
    return {s["image_id"]: s["skip"] for s in (dataset[i] for i in range(len(dataset))) if is_skip(s)}


# --------------------------------------------------------------------------- transforms
def test_whole_image_box_stays_whole_and_hand_computed_case():
    boxes, keep = transform_boxes(torch.tensor([[0.0, 0.0, 39.0, 19.0], [4.0, 2.0, 11.0, 5.0]]), (0.5, 0.5), (0, 0), (10, 20))
    assert keep.all()
    assert boxes.tolist() == [[0.0, 0.0, 19.0, 9.0], [2.0, 1.0, 5.0, 2.0]]


@pytest.mark.parametrize(
    "orig, size, crop, rect",
    [
        pytest.param((64, 64), (32, 32), None, (8, 20, 27, 43), id="down2"),
        pytest.param((16, 16), (32, 32), None, (4, 2, 11, 9), id="up2"),
        pytest.param((64, 64), (16, 16), 0.5, (20, 20, 43, 35), id="down2-crop"),
        pytest.param((40, 20), (10, 40), None, (4, 2, 11, 13), id="anisotropic"),
    ],
)
def test_mask_and_box_move_together(orig, size, crop, rect):
    """A rectangle's mask, resized with nearest neighbour, has exactly the transformed box."""
    width, height = orig
    mask = np.zeros((height, width), bool)
    mask[rect[1] : rect[3] + 1, rect[0] : rect[2] + 1] = True
    out = transform_sample(Image.new("RGB", (width, height)), np.array([rect], np.float32), size, crop, mask=mask, ignore=~mask)
    assert out["image"].shape == (3, *size)
    ys, xs = torch.nonzero(out["mask"], as_tuple=True)
    assert out["boxes"].tolist() == [[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]]
    assert torch.equal(out["ignore"], ~out["mask"])


def test_crop_drops_boxes_outside_and_clips_the_rest():
    out = transform_sample(Image.new("RGB", (64, 64)), np.array([[0, 0, 5, 5], [10, 30, 40, 33]], np.float32), (16, 16), 0.5)
    assert out["keep"].tolist() == [False, True]  # resized 32x32, crop offset 8: [0..2] is outside
    assert out["boxes"].tolist() == [[0.0, 7.0, 11.5, 8.0]]  # x1 = (40 + 1) * 0.5 - 8 - 1


# --------------------------------------------------------------------------- ImageNet
def make_imagenet(root: Path, csv_layout: bool) -> None:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n")
    images = root / ("ILSVRC/Data/CLS-LOC/val" if csv_layout else "val")
    write_image(images / "n01443537" / "ILSVRC2012_val_00000001.JPEG", 40, 30)  # class sub-folder
    write_image(images / "ILSVRC2012_val_00000002.JPEG", 20, 20)
    write_corrupt(images / "ILSVRC2012_val_00000003.JPEG")
    write_image(images / "ILSVRC2012_val_00000004.JPEG", 20, 20)
    objects = {
        "ILSVRC2012_val_00000001": [("n01443537", 2, 3, 20, 25), ("n01443537", 25, 0, 39, 29)],
        "ILSVRC2012_val_00000002": [("n01484850", 0, 0, 19, 19)],
        "ILSVRC2012_val_00000003": [("n01440764", 1, 1, 5, 5)],
    }
    if csv_layout:
        lines = ["ImageId,PredictionString"]
        for image_id, objs in objects.items():
            lines.append(image_id + "," + " ".join(" ".join(map(str, o)) for o in objs) + " ")
        lines.append("ILSVRC2012_val_00000004,n01440764 1 2 3")  # corrupt: 4 fields
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    else:
        for image_id, objs in objects.items():
            body = "".join(
                f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                for n, a, b, c, d in objs
            )
            path = root / "bbox" / "val" / f"{image_id}.xml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"<annotation><filename>{image_id}</filename>{body}</annotation>")
        # image 4 has no XML: a skip


@pytest.mark.parametrize("csv_layout", [False, True], ids=["xml", "csv"])
def test_imagenet_val(tmp_path, csv_layout):
    make_imagenet(tmp_path, csv_layout)
    ds = create_dataset("imagenet_val", root=str(tmp_path), image_size=(15, 20))
    assert ds.layout == ("csv" if csv_layout else "xml")
    assert ds.class_names == ["tench", "goldfish", "great white shark"]
    assert len(ds) == 4
    got = {s["image_id"]: s for s in valid(ds)}
    assert set(got) == {"ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"}
    first = got["ILSVRC2012_val_00000001"]
    assert first["label"] == 1 and first["box_labels"].tolist() == [1, 1]
    assert first["orig_size"] == (30, 40) and first["image"].shape == (3, 15, 20)
    assert first["orig_boxes"].tolist() == [[2, 3, 20, 25], [25, 0, 39, 29]]
    assert torch.allclose(first["boxes"], torch.tensor([resized(b, 0.5, 0.5) for b in [[2, 3, 20, 25], [25, 0, 39, 29]]]))
    assert got["ILSVRC2012_val_00000002"]["label"] == 2
    reasons = skips(ds)
    assert reasons["ILSVRC2012_val_00000003"].startswith("corrupt image")
    expected = "corrupt annotation" if csv_layout else "missing annotation"
    assert reasons["ILSVRC2012_val_00000004"].startswith(expected)
    assert sum(ds.skipped.values()) >= 2


# --------------------------------------------------------------------------- CUB
def test_cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    paths = ["001.Albatross/a_1.jpg", "001.Albatross/a_2.jpg", "002.Auklet/b_1.jpg", "002.Auklet/b_2.jpg", "002.Auklet/b_3.jpg"]
    for p in paths[:4]:
        write_image(root / "images" / p, 50, 40)
    root.joinpath("images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(paths)))
    root.joinpath("image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n5 2\n")
    root.joinpath("bounding_boxes.txt").write_text("1 10.0 5.0 20.0 30.0\n2 0.0 0.0 50.0 40.0\n3 4.0 4.0 10.0 10.0\n4 1.0 2.0 x 4.0\n5 1.0 1.0 2.0 2.0\n")
    root.joinpath("train_test_split.txt").write_text("1 0\n2 1\n3 0\n4 0\n5 0\n")
    root.joinpath("classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    seg = write_mask(root / "segmentations" / "001.Albatross" / "a_1.png", 50, 40, (12, 6, 27, 33))
    write_mask(root / "segmentations" / "002.Auklet" / "b_1.png", 50, 40, (4, 4, 13, 13))
    ds = create_dataset("cub", root=str(root), split="test", image_size=20)
    assert ds.class_names == ["Albatross", "Auklet"]
    assert [ds.image_id(i) for i in range(len(ds))] == [paths[0], paths[2], paths[3], paths[4]]
    got = {s["image_id"]: s for s in valid(ds)}
    assert set(got) == {paths[0], paths[2]}
    a1 = got[paths[0]]
    assert a1["label"] == 0 and a1["orig_boxes"].tolist() == [[10, 5, 29, 34]]
    assert torch.allclose(a1["boxes"], torch.tensor([resized([10, 5, 29, 34], 20 / 50, 20 / 40)]))
    assert a1["mask"].shape == (20, 20) and a1["mask"].any()
    reference = np.asarray(Image.fromarray(seg.astype(np.uint8) * 255).resize((20, 20), Image.NEAREST)) > 127
    assert np.array_equal(a1["mask"].numpy(), reference)
    assert got[paths[2]]["label"] == 1
    reasons = skips(ds)
    assert reasons[paths[3]].startswith("corrupt annotation") and reasons[paths[4]].startswith("missing image")
    assert len(create_dataset("cub", root=str(root), split="train")) == 1
    assert len(create_dataset("cub", root=str(root), split="all")) == 5


# --------------------------------------------------------------------------- VOC
def voc_xml(objects) -> str:
    body = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
        for n, d, a, b, c, e in objects
    )
    return f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>60</width><height>40</height><depth>3</depth></size>{body}</annotation>"


def test_voc2007(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    write_image(root / "JPEGImages" / "000001.jpg", 60, 40)
    write_image(root / "JPEGImages" / "000002.jpg", 60, 40)
    write_image(root / "JPEGImages" / "000003.jpg", 60, 40)
    (root / "Annotations" / "000001.xml").write_text(voc_xml([("dog", 0, 1, 1, 30, 20), ("person", 1, 31, 5, 60, 40), ("dog", 0, 10, 21, 20, 30)]))
    (root / "Annotations" / "000002.xml").write_text(voc_xml([("cat", 0, 2, 2, 5, 5)])[:-20])  # truncated XML
    # 000003 has no annotation file
    ds = create_dataset("voc2007", root=str(root), image_size=(20, 30))
    sample = ds[0]
    assert sample["label"] == 11  # dog: the first object's class
    assert sample["box_labels"].tolist() == [11, 14, 11]
    assert sample["difficult"].tolist() == [False, True, False]
    orig = [[0, 0, 29, 19], [30, 4, 59, 39], [9, 20, 19, 29]]  # 1-based -> 0-based
    assert sample["orig_boxes"].tolist() == orig
    assert torch.allclose(sample["boxes"], torch.tensor([resized(b, 0.5, 0.5) for b in orig]))
    assert is_skip(ds[1]) and ds[1]["skip"].startswith("corrupt annotation") and ds[1]["image_id"] == "000002"
    assert is_skip(ds[2]) and ds[2]["skip"].startswith("missing annotation")
    easy = create_dataset("voc2007", root=str(root), include_difficult=False, image_size=20)[0]
    assert easy["box_labels"].tolist() == [11, 11] and not easy["difficult"].any()


# --------------------------------------------------------------------------- wsolevaluation
def test_wsol_boxes(tmp_path):
    meta, data = tmp_path / "metadata" / "CUB" / "test", tmp_path / "dataset" / "CUB"
    meta.mkdir(parents=True)
    write_image(data / "a" / "1.jpg", 30, 20)
    write_image(data / "a" / "2.jpg", 30, 20)
    write_image(data / "b" / "3.jpg", 30, 20)
    (meta / "image_ids.txt").write_text("a/1.jpg\na/2.jpg\nb/3.jpg\n")
    (meta / "class_labels.txt").write_text("a/1.jpg,0\na/2.jpg,0\nb/3.jpg,4\n")
    (meta / "image_sizes.txt").write_text("a/1.jpg,30,20\na/2.jpg,31,20\nb/3.jpg,30,20\n")
    (meta / "localization.txt").write_text("a/1.jpg,1,2,10,12\na/1.jpg,15,3,29,19\na/2.jpg,0,0,3,3\nb/3.jpg,0,0,5,5\n")
    ds = create_dataset("wsol", root=str(tmp_path), metadata_dir=str(meta), data_root=str(data), image_size=10)
    assert ds.kind == "boxes" and len(ds.class_names) == 5
    first = ds[0]
    assert first["label"] == 0 and first["orig_boxes"].tolist() == [[1, 2, 10, 12], [15, 3, 29, 19]]
    assert torch.allclose(first["boxes"], torch.tensor([resized(b, 1 / 3, 0.5) for b in [[1, 2, 10, 12], [15, 3, 29, 19]]]))
    assert ds[1]["skip"].startswith("corrupt annotation") and "image_sizes" in ds[1]["skip"]  # size mismatch
    assert ds[2]["label"] == 4


def test_wsol_masks_with_ignore(tmp_path):
    meta, data = tmp_path / "metadata" / "OpenImages" / "test", tmp_path / "dataset" / "OpenImages"
    meta.mkdir(parents=True)
    write_image(data / "test" / "x.jpg", 24, 16)
    write_image(data / "test" / "y.jpg", 24, 16)
    m1 = write_mask(data / "masks" / "x_a.png", 24, 16, (0, 0, 5, 5))
    m2 = write_mask(data / "masks" / "x_b.png", 24, 16, (10, 8, 15, 15))
    ign = write_mask(data / "masks" / "x_ignore.png", 24, 16, (4, 4, 11, 11))
    (meta / "image_ids.txt").write_text("test/x.jpg\ntest/y.jpg\n")
    (meta / "class_labels.txt").write_text("test/x.jpg,3\ntest/y.jpg,1\n")
    (meta / "localization.txt").write_text("test/x.jpg,masks/x_a.png,masks/x_ignore.png\ntest/x.jpg,masks/x_b.png,\ntest/y.jpg,masks/missing.png,\n")
    ds = create_dataset("wsol", root=str(tmp_path), metadata_dir=str(meta), data_root=str(data), image_size=(16, 24))
    assert ds.kind == "masks"
    x = ds[0]
    assert x["label"] == 3 and len(x["boxes"]) == 0
    assert np.array_equal(x["mask"].numpy(), m1 | m2)
    assert np.array_equal(x["ignore"].numpy(), ign & ~(m1 | m2))
    assert ds[1]["skip"].startswith("missing mask")
    half = create_dataset("wsol", root=str(tmp_path), metadata_dir=str(meta), data_root=str(data), image_size=(8, 12))[0]
    assert np.array_equal(half["mask"].numpy(), (m1 | m2)[::2, ::2])  # cv2 nearest at scale 1/2: even pixels


def test_wsol_masks_from_odd_sizes_follow_cv2_inter_nearest(tmp_path):
    """wsolevaluation's get_mask: cv2.resize(float32 mask, INTER_NEAREST) > 0.5 (source pixel
    floor(i * scale)); PIL's NEAREST (pixel centres) gives other pixels at these sizes."""
    import cv2

    from salbench.datasets.base import resize_mask

    meta, data = tmp_path / "metadata" / "OpenImages" / "test", tmp_path / "dataset" / "OpenImages"
    meta.mkdir(parents=True)
    width, height = 37, 23
    write_image(data / "test" / "x.jpg", width, height)
    rng = np.random.default_rng(0)
    grey = (rng.random((height, width)) > 0.6).astype(np.uint8) * 255
    grey[0, 0] = 1  # a faint pixel: foreground for wsolevaluation (grey > 0.5)
    ignore = np.zeros((height, width), np.uint8)
    ignore[5:15, 3:20] = 255
    (data / "masks").mkdir(parents=True)
    Image.fromarray(grey).save(data / "masks" / "x_m.png")
    Image.fromarray(ignore).save(data / "masks" / "x_ignore.png")
    (meta / "image_ids.txt").write_text("test/x.jpg\n")
    (meta / "class_labels.txt").write_text("test/x.jpg,2\n")
    (meta / "localization.txt").write_text("test/x.jpg,masks/x_m.png,masks/x_ignore.png\n")
    for size in ((224, 224), (30, 41), (16, 12)):
        sample = create_dataset("wsol", root=str(tmp_path), metadata_dir=str(meta), data_root=str(data),
                                image_size=size)[0]
        fg = cv2.resize(grey.astype(np.float32), size[::-1], interpolation=cv2.INTER_NEAREST) > 0.5
        box = cv2.resize(ignore.astype(np.float32), size[::-1], interpolation=cv2.INTER_NEAREST) > 0.5
        assert np.array_equal(sample["mask"].numpy(), fg), size
        assert np.array_equal(sample["ignore"].numpy(), box & ~fg), size
        assert not np.array_equal(resize_mask(grey > 0, size, "pil_nearest"), fg), size  # PIL would differ


# --------------------------------------------------------------------------- COCO
def test_coco(tmp_path):
    write_image(tmp_path / "images" / "1.jpg", 40, 30)
    write_image(tmp_path / "images" / "2.jpg", 40, 30)
    write_corrupt(tmp_path / "images" / "3.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "2.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "3.jpg", "width": 40, "height": 30},
            {"id": 4, "file_name": "4.jpg", "width": 40, "height": 30},  # no annotations: not listed
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5], "area": 20, "iscrowd": 0, "segmentation": [[2, 3, 6, 3, 6, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 18, "bbox": [10, 10, 20, 16], "area": 320, "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 26, 10, 26]]},
            {"id": 3, "image_id": 1, "category_id": 18, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 30, 1170]}},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 3], "area": 0, "iscrowd": 0, "segmentation": []},
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [5, 5, 3, 3], "area": 9, "iscrowd": 0, "segmentation": []},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = create_dataset("coco", root=str(tmp_path), annotations="instances.json", images_dir="images", image_size=(30, 40))
    assert ds.class_names == ["person", "dog"] and len(ds) == 3
    s = ds[0]
    assert s["label"] == 1  # dog: the largest non-crowd annotation
    assert s["orig_boxes"].tolist() == [[2, 3, 5, 7], [10, 10, 29, 25], [0, 0, 39, 29]]
    assert s["box_labels"].tolist() == [0, 1, 1] and s["difficult"].tolist() == [False, False, True]
    expected = np.zeros((30, 40), bool)
    expected[10:26, 10:30] = True  # the dog polygon (pixel corners 10..30 x 10..26) ...
    expected[:, 0] = True  # ... united with the crowd RLE (first column: 30 pixels)
    assert np.array_equal(s["mask"].numpy(), expected)
    person = np.zeros((30, 40), bool)
    person[3:8, 2:6] = True
    assert s["class_mask_labels"].tolist() == [0, 1]
    assert np.array_equal(s["class_masks"][0].numpy(), person) and np.array_equal(s["class_masks"][1].numpy(), expected)
    assert ds[1]["skip"].startswith("corrupt annotation")
    assert ds[2]["skip"].startswith("corrupt image")

    # pointing game with mask ground truth: every class with a mask is scored against its own mask
    from salbench.metrics import create_metric

    from helpers import explained

    batch = collate([s])
    metric = create_metric("pointing_game", ground_truth="mask", frame="input", tolerance=0)
    assert metric.present_classes(batch) == [[0, 1]]
    pairs = batch.select([0, 0, 0, 0])
    maps = torch.zeros(4, 30, 40)
    maps[0, 5, 3] = maps[1, 5, 3] = 1.0  # a person pixel
    maps[2, 20, 20] = maps[3, 20, 20] = 1.0  # a dog pixel
    view = explained(pairs, maps, targets=torch.tensor([0, 1, 0, 1]), logits=torch.zeros(4, 2))
    assert metric.update(view)["m"]["pointing_hit"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert metric.compute()["m"]["pointing_acc"] == 0.5


def test_compressed_rle_hand_example_and_errors():
    from salbench.datasets.coco import rle_string_to_counts, rle_to_mask

    # counts 2, 3, 4, then 1 stored as 1 - 3 = -2: one group 30 (sign bit set) = chr(48 + 30)
    assert rle_string_to_counts("234N") == [2, 3, 4, 1]
    mask = rle_to_mask({"size": [5, 2], "counts": "234N"}, 5, 2)  # column-major: runs down columns
    assert mask.T.ravel().tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]
    assert np.array_equal(rle_to_mask({"counts": [2, 3, 4, 1]}, 5, 2), mask)
    with pytest.raises(ValueError, match="add up to 10 pixels"):
        rle_to_mask({"counts": "234N"}, 4, 2)
    with pytest.raises(ValueError, match="size"):
        rle_to_mask({"size": [2, 5], "counts": "234N"}, 5, 2)
    with pytest.raises(ValueError, match="truncated"):
        rle_string_to_counts("2o")  # 'o' = 63: more groups announced, none follows


def test_coco_compressed_rle_masks_and_corrupt_segmentation(tmp_path):
    write_image(tmp_path / "images" / "1.jpg", 2, 5)
    write_image(tmp_path / "images" / "2.jpg", 2, 5)
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 2, "height": 5},
                   {"id": 2, "file_name": "2.jpg", "width": 2, "height": 5}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 5], "iscrowd": 1,
             "segmentation": {"size": [5, 2], "counts": "234N"}},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 5], "iscrowd": 0,
             "segmentation": {"size": [5, 2], "counts": "2o"}},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = create_dataset("coco", root=str(tmp_path), annotations="instances.json", images_dir="images", image_size=(5, 2))
    assert ds[0]["mask"].T.flatten().tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 1]
    assert ds[1]["skip"].startswith("corrupt segmentation") and "truncated" in ds[1]["skip"]


def test_compressed_rle_matches_pycocotools_on_random_masks():
    mask_api = pytest.importorskip("pycocotools.mask")
    from salbench.datasets.coco import rle_to_mask

    rng = np.random.default_rng(0)
    for height, width, density in [(1, 1, 0.5), (7, 3, 0.5), (30, 40, 0.02), (64, 48, 0.97), (120, 90, 0.3)]:
        for blobby in (False, True):
            mask = rng.random((height, width)) < density
            if blobby:  # long runs (multi-group counts) as in real object masks
                mask = np.zeros((height, width), bool)
                mask[height // 4 : 3 * height // 4 + 1, width // 3 : width - 1] = True
            encoded = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert isinstance(encoded["counts"], bytes)
            decoded = rle_to_mask({"size": encoded["size"], "counts": encoded["counts"].decode()}, height, width)
            assert np.array_equal(decoded, mask), (height, width, density, blobby)


# --------------------------------------------------------------------------- folder + CSV
def test_folder_csv(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 32, 32)
    write_image(tmp_path / "imgs" / "b.png", 32, 16)
    write_mask(tmp_path / "imgs" / "a_mask.png", 32, 32, (2, 2, 9, 9))
    (tmp_path / "imgs" / "boxes.csv").write_text(
        "image,label,x0,y0,x1,y1,difficult,mask\n"
        "a.png,cat,2,2,9,9,0,a_mask.png\n"
        "a.png,cat,20,20,31,31,1,\n"
        "b.png,dog,,,,,,\n"
        "c.png,dog,0,0,1,1,0,\n"
        "a.png,cat,40,40,50,50,0,\n"[:-26]
    )
    (tmp_path / "imgs" / "classes.txt").write_text("cat\ndog\n")
    ds = create_dataset("folder", root=str(tmp_path / "imgs"), image_size=16, class_names="classes.txt")
    assert ds.class_names == ["cat", "dog"]
    a = ds[0]
    assert a["label"] == 0 and a["orig_boxes"].tolist() == [[2, 2, 9, 9], [20, 20, 31, 31]]
    assert a["difficult"].tolist() == [False, True]
    assert a["boxes"].tolist() == [[1, 1, 4, 4], [10, 10, 15, 15]]
    ys, xs = torch.nonzero(a["mask"], as_tuple=True)
    assert [xs.min(), ys.min(), xs.max(), ys.max()] == [1, 1, 4, 4]
    b = ds[1]
    assert b["label"] == 1 and b["boxes"].shape == (0, 4)
    assert ds[2]["skip"].startswith("missing image")


# --------------------------------------------------------------------------- common
def test_limit_shard_dataloader_and_skip_records(tmp_path):
    root = tmp_path / "imgs"
    rows = ["image,label,x0,y0,x1,y1"]
    for i in range(7):
        if i == 3:
            write_corrupt(root / f"{i}.png")
        else:
            write_image(root / f"{i}.png", 16, 16, (i * 30, 0, 0))
        rows.append(f"{i}.png,{i % 2},1,1,8,8")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    full = create_dataset("folder", root=str(root), image_size=8)
    shards = [create_dataset("folder", root=str(root), image_size=8, limit=6, shard=k, num_shards=2) for k in range(2)]
    assert [s.image_id(i) for s in shards for i in s._positions()] == ["0.png", "2.png", "4.png", "1.png", "3.png", "5.png"]
    assert len(shards[0]) + len(shards[1]) == 6
    loader = torch.utils.data.DataLoader(full, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 6
    skipped = [r for b in batches for r in b.extras["skipped"]]
    assert [(r["image_id"], r["index"]) for r in skipped] == [("3.png", 3)] and skipped[0]["reason"].startswith("corrupt image")
    assert batches[0].images.shape == (3, 3, 8, 8) and batches[0].boxes[0].tolist() == [[0.5, 0.5, 3.5, 3.5]]
    empty = collate([full[3]])
    assert len(empty) == 0 and empty.extras["skipped"][0]["image_id"] == "3.png"


def test_samples_annotations_are_inside_the_photos():
    ds = create_dataset("samples", image_size=224)
    for i in range(len(ds)):
        sample = ds[i]
        assert not is_skip(sample), sample
        entry = ds.entries[i]
        assert sample["orig_boxes"].tolist() == [[float(v) for v in b] for b in entry["boxes"]]
        assert sample["label"] in entry["accepted"] and 0 <= sample["label"] < 1000
        height, width = sample["orig_size"]
        assert sample["orig_boxes"][:, 2].max() <= width - 1 and sample["orig_boxes"][:, 3].max() <= height - 1


@pytest.mark.parametrize("name", ["imagenet_val", "cub", "voc2007", "wsol", "coco", "folder"])
def test_unset_root_says_what_to_point_it_at(name):
    with pytest.raises(ValueError, match="set root.*docs/datasets.md"):
        create_dataset(name)
