"""Image data sources: scikit-learn's bundled digits, folder-per-class images, ``.npz`` arrays.

Every source becomes an ``ImageData`` (RGB uint8 images, integer labels, label names) with the
``TaskData`` interface of ``flq.task.data``, so partitioning and the train/eval loops treat it
exactly like text. Images keep their own size here: the model's own image processor resizes
and normalises them per batch (``encode_images``), as that model expects. Problems raise
``DataError`` naming the file or array, never a library traceback.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError, encode_labels

IMAGE_TASK = "image-classification"
IMAGE_SOURCES = ("digits",)  # embedded image data sets, by name
IMAGE_FILE_SUFFIXES = (".npz",)  # files of images (a folder of class folders is the other source)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NPZ_IMAGES, NPZ_LABELS, NPZ_LABEL_NAMES = "images", "labels", "label_names"
SOURCES_HINT = (
    "'digits' (scikit-learn's bundled 8x8 digits), a folder with one sub-folder of images per "
    "class, or an .npz with arrays 'images' (N, H, W[, C]) and 'labels' (N,)"
)


@dataclass
class ImageData:
    images: list[np.ndarray]  # each (H, W, 3) uint8 RGB; sizes may differ
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if not self.images:
            raise DataError("the data source contains no images")
        if len(self.labels) != len(self.images):
            raise DataError("images and labels differ in length")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: Sequence[int]) -> ImageData:
        return ImageData([self.images[i] for i in indices], [self.labels[i] for i in indices], self.label_names)


def load_image_data(source: str) -> ImageData:
    """Load ``source`` for image classification: 'digits', a class-folder tree or an .npz."""
    if source == "digits":
        return load_digits()
    if source == "bbc-news":
        raise DataError(f"'bbc-news' is text; task image-classification needs {SOURCES_HINT}")
    if source.startswith("hf:"):
        raise DataError(f"hub data sets are not supported for images yet; export {source[3:]!r} to {SOURCES_HINT}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source!r} not found; task image-classification needs {SOURCES_HINT}")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix.lower() in IMAGE_FILE_SUFFIXES:
        return _load_npz(path)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} for images (use a folder or an .npz)")


def load_digits() -> ImageData:
    """scikit-learn's bundled digits (1,797 8x8 grayscale images, 10 classes; no download)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DataError("the 'digits' data set needs scikit-learn: run scripts/setup.sh") from exc
    digits = sklearn_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0))  # 0..16 intensities to 0..255
    images = to_rgb_uint8(pixels, "digits")
    return ImageData(list(images), [int(t) for t in digits.target], [str(n) for n in digits.target_names])


def _load_folder(root: Path) -> ImageData:
    from PIL import Image

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: expected one sub-folder per class with images ({', '.join(IMAGE_SUFFIXES)}) inside")
    images, labels, names = [], [], []
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue  # an empty class has nothing to learn from: it gets no label id
        for file in files:
            try:
                with Image.open(file) as img:
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            except (OSError, Image.DecompressionBombError) as exc:
                raise DataError(f"{file}: not a readable image ({exc})") from exc
            labels.append(len(names))
        names.append(class_dir.name)
    if not images:
        raise DataError(f"{root}: the class folders contain no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(names) < 2:
        raise DataError(f"{root}: classification needs images in at least 2 class folders, found {names}")
    return ImageData(images, labels, names)


def _load_npz(path: Path) -> ImageData:
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle: object arrays are refused
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from exc
    with archive:
        missing = [k for k in (NPZ_IMAGES, NPZ_LABELS) if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing array(s) {missing} (found {sorted(archive.files)}); "
                f"an image .npz needs 'images' (N, H, W[, C]) and 'labels' (N,)"
            )
        try:
            raw_images = archive[NPZ_IMAGES]
            raw_labels = archive[NPZ_LABELS]
            names = archive[NPZ_LABEL_NAMES] if NPZ_LABEL_NAMES in archive.files else None
        except ValueError as exc:  # object arrays need pickle
            raise DataError(f"{path}: {exc} (store numbers or strings, not Python objects)") from exc
    images = to_rgb_uint8(raw_images, f"{path}: 'images'")
    if raw_labels.ndim != 1 or len(raw_labels) != len(images):
        raise DataError(
            f"{path}: 'labels' must be 1-D with one label per image, "
            f"got shape {raw_labels.shape} for {len(images)} images"
        )
    labels, label_names = _npz_labels(path, raw_labels, names)
    return ImageData(list(images), labels, label_names)


def _npz_labels(path: Path, raw: np.ndarray, names: np.ndarray | None) -> tuple[list[int], list[str]]:
    if names is None or raw.dtype.kind not in "iu":
        return encode_labels(raw.tolist())
    names_list = [str(n) for n in np.asarray(names).ravel()]
    if raw.min() < 0 or raw.max() >= len(names_list):
        raise DataError(f"{path}: labels must be in [0, {len(names_list)}) to index 'label_names'")
    if len(names_list) < 2:
        raise DataError(f"{path}: classification needs at least 2 label names, found {names_list}")
    return [int(v) for v in raw], names_list


def to_rgb_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1/3/4, as (N, H, W, 3) uint8.

    Integers must lie in 0..255; floats in [0, 1] are scaled by 255, floats up to 255 are kept.
    """
    a = np.asarray(array)
    if a.dtype.kind not in "uif" or a.size == 0:
        raise DataError(f"{where}: expected a non-empty numeric array, got dtype {a.dtype} and shape {a.shape}")
    if a.ndim == 3:
        a = a[..., None]
    elif a.ndim == 4 and a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)  # channels first
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{where}: expected shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1/3/4, got {a.shape}"
        )
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"{where}: contains NaN or infinite values")
        a = a * 255.0 if a.max() <= 1.0 else a
    if a.min() < 0 or a.max() > 255:
        raise DataError(f"{where}: pixel values must lie in 0..255 (or 0..1 as floats), got {a.min()}..{a.max()}")
    a = np.rint(a).astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])  # RGBA: the alpha channel is dropped


def encode_images(data: ImageData, idx, processor) -> dict:
    """A model batch: ``pixel_values`` from the model's own image processor, and ``labels``."""
    import torch

    pixels = processor(images=[data.images[i] for i in idx], return_tensors="pt", input_data_format="channels_last")
    return {
        "pixel_values": pixels["pixel_values"],
        "labels": torch.tensor([data.labels[i] for i in idx], dtype=torch.long),
    }
