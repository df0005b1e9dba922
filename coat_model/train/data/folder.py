"""Training images from a folder on disk or from an in-memory batch.

Both datasets give float images [3, size, size] in [0, 1]: centre-cropped to a square, resized with
anti-aliasing, and flipped left-right when ``flip=True``. Two ways in:

* ``dataset.draw(indices, flips)`` (what the trainer uses): the files decoded on the CPU (by the batch workers)
  into :class:`Decoded` images, 8-bit files as uint8 tensors, large ones shrunk by an integer factor toward the
  training size (a box filter; ``dataset[i]`` does the same); :meth:`Decoded.render` moves them
  to the model's device and crops, resizes and flips them there, one call per distinct source size. The flips are
  given (the pair builder draws them from each position's own stream), so the pairs do not depend on the number
  of workers or processes;
* ``dataset[i]``: one image made on the CPU, flipped with torch's global RNG (which a ``DataLoader`` seeds per
  worker).

Any PIL-readable file counts, whatever its size or mode:

* RGBA, LA and palette images with transparency are composited on **white** (transparent pixels become
  white, not black, so cut-outs look like objects on a plain background);
* grayscale is repeated to three channels;
* 16-bit images (``I;16``, ``I``, e.g. 16-bit PNGs) keep their precision: values are divided by 65535;
  32-bit float images (``F``) are taken as [0, 1] if they fit, else divided by their maximum;
* EXIF orientation is applied.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "Decoded", "ImageFolderDataset", "TensorImageDataset", "images_to_dataset",
           "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _to_rgb_array(img: Image.Image, keep_8bit: bool = False) -> np.ndarray:
    """Any PIL image -> float32 array [H, W, 3] in [0, 1] (see module docstring for the rules); with ``keep_8bit``,
    an 8-bit image without transparency stays a uint8 array [H, W, 3] (0-255): a quarter of the bytes to move."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        return np.repeat((np.clip(grey, 0, 65535) / 65535.0)[..., None], 3, -1).astype(np.float32)
    if mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float32))
        top = grey.max() if grey.size else 1.0
        grey = np.clip(grey / top if top > 1.0 else grey, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, -1)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or img.mode == "RGBA":
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    rgb = np.array(img.convert("RGB"))  # a writable copy
    return rgb if keep_8bit else rgb.astype(np.float32) / np.float32(255.0)


_REDUCIBLE = ("RGB", "L", "RGBA", "LA", "I", "F")  # the modes PIL's Image.reduce takes


def load_image(path: str | os.PathLike, keep_8bit: bool = False, at_least: int | None = None) -> torch.Tensor:
    """Read one image file as a float tensor [3, H, W] in [0, 1] (raises on unreadable files); ``keep_8bit``: an
    8-bit image without transparency as a uint8 tensor (0-255) instead. ``at_least``: first shrink the image by
    the largest integer factor (box filter, ``Image.reduce``) that keeps its shorter side at least this long, so that
    a large photo is not carried at full size to be resized later."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
        factor = min(img.size) // at_least if at_least else 1
        if factor >= 2 and img.mode in _REDUCIBLE:
            img = img.reduce(factor)
        array = _to_rgb_array(img, keep_8bit)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 (0-255) -> float32 in [0, 1] (on the CPU bit for bit as :func:`load_image` converts; a GPU may round
    the division differently in the last bit); float images pass through."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def _square_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop [C, H, W] to a square and resize to [C, size, size] (anti-aliased bilinear)."""
    return _square_resize_batch(image[None], size)[0]


def _square_resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop [N, C, H, W] to squares and resize to float [N, C, size, size] (anti-aliased bilinear); uint8
    images are converted after the crop (:func:`to_unit_float`)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = to_unit_float(images[..., top:top + side, left:left + side])
    if side == size:
        return square.contiguous()
    out = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return out.clamp(0.0, 1.0)


def _maybe_flip(image: torch.Tensor, flip: bool) -> torch.Tensor:
    return image.flip(-1) if flip and torch.rand(()) < 0.5 else image


class Decoded:
    """Images decoded on the CPU (uint8 where the file was 8-bit, float32 in [0, 1] otherwise), stacked per
    distinct (dtype, height, width) so that a batch crosses to the device (or between processes) as a few tensors,
    with a flip bit each; :meth:`render` makes them training images on a device."""

    def __init__(self, images: list[torch.Tensor], flips: list[bool], size: int):
        if len(images) != len(flips):
            raise ValueError(f"{len(images)} images but {len(flips)} flip bits")
        self.flips, self.size, self.count = [bool(f) for f in flips], int(size), len(images)
        rows: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            rows.setdefault((image.dtype, *image.shape[-2:]), []).append(i)
        self.groups = [(r, torch.stack([images[i] for i in r])) for r in rows.values()]

    @property
    def images(self) -> list[torch.Tensor]:
        """Each image as decoded, in order."""
        out = [None] * self.count
        for rows, batch in self.groups:
            for k, i in enumerate(rows):
                out[i] = batch[k]
        return out

    def render(self, device=None) -> torch.Tensor:
        """[N, 3, size, size] float in [0, 1] on ``device``: moved there as decoded, then converted, centre-cropped,
        resized and flipped there, one batched call per group."""
        device = torch.device(device or "cpu")
        out = torch.empty(self.count, 3, self.size, self.size, device=device)
        for rows, batch in self.groups:
            made = _square_resize_batch(batch.to(device, non_blocking=True), self.size)
            flip = torch.tensor([self.flips[i] for i in rows]).to(device, non_blocking=True)
            made = torch.where(flip.view(-1, 1, 1, 1), made.flip(-1), made)
            out.index_copy_(0, torch.tensor(rows).to(device, non_blocking=True), made)
        return out


class ImageFolderDataset(torch.utils.data.Dataset):
    """All images under ``root`` (recursively), as [3, size, size] tensors in [0, 1].

    Files with an accepted extension (:data:`IMAGE_EXTENSIONS`, any case) are listed in sorted order and
    their headers are checked once; unreadable ones are skipped and reported by a single warning. A file
    that passes that check but fails to decode later is replaced by the next readable one (one more
    warning at most). A folder without any readable image raises ``ValueError``.
    """

    def __init__(self, root: str | os.PathLike, size: int, flip: bool = True):
        self.root, self.size, self.flip = Path(root), int(size), flip
        if self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        candidates = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self.files: list[Path] = []
        bad: list[Path] = []
        for path in candidates:
            (self.files if _readable(path) else bad).append(path)
        self.skipped = len(bad)
        if bad:
            names = ", ".join(str(p.relative_to(self.root)) for p in bad[:5]) + (", ..." if len(bad) > 5 else "")
            warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {str(self.root)!r}: {names}",
                          stacklevel=2)
        if not self.files:
            found = f"{len(bad)} unreadable" if bad else "no"
            raise ValueError(
                f"no usable images in {str(self.root)!r} ({found} image files found, searched recursively); "
                f"accepted extensions: {', '.join(IMAGE_EXTENSIONS)}"
            )
        self._warned_decode = False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _maybe_flip(_square_resize(self._decode(index), self.size), self.flip)

    def draw(self, indices, flips=None) -> Decoded:
        """The files of ``indices`` decoded (8-bit ones as uint8), to be made on the device by
        :meth:`Decoded.render`; ``flips``: one bit per index (ignored when the dataset does not flip)."""
        flips = [False] * len(indices) if flips is None or not self.flip else list(flips)
        return Decoded([self._decode(int(i), keep_8bit=True) for i in indices], flips, self.size)

    def _decode(self, index: int, keep_8bit: bool = False) -> torch.Tensor:
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                return load_image(path, keep_8bit, at_least=self.size)
            except Exception as error:      # a file that passed the header check but does not decode
                if not self._warned_decode:
                    warnings.warn(f"could not decode {str(path)!r} ({error}); using the next image instead",
                                  stacklevel=2)
                    self._warned_decode = True
        raise ValueError(f"none of the {len(self.files)} images in {str(self.root)!r} could be decoded")


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.size     # header parsed
        return True
    except Exception:
        return False


class TensorImageDataset(torch.utils.data.Dataset):
    """An in-memory batch [N, C, H, W] (C = 1, 3 or 4; float in [0, 1]) as a dataset of [3, size, size].

    Grayscale is repeated to RGB and RGBA is composited on white, as for files.
    """

    def __init__(self, images: torch.Tensor, size: int | None = None, flip: bool = True):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images))}")
        n, c, h, w = images.shape
        if n == 0:
            raise ValueError("images is an empty batch: give at least one image")
        if c not in (1, 3, 4):
            raise ValueError(f"images must have 1, 3 or 4 channels in dim 1 ([N, C, H, W]), got shape "
                             f"{tuple(images.shape)}; ComfyUI IMAGE tensors [N, H, W, C] need .movedim(-1, 1)")
        images = images.detach().float().cpu()
        if c == 1:
            images = images.expand(-1, 3, -1, -1)
        elif c == 4:
            images = images[:, :3] * images[:, 3:] + (1.0 - images[:, 3:])
        self.images = images.clamp(0.0, 1.0)
        self.size = int(size) if size is not None else min(h, w)
        self.flip = flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return _maybe_flip(_square_resize(self.images[index], self.size), self.flip)

    def draw(self, indices, flips=None) -> Decoded:
        """The images of ``indices`` as :class:`Decoded` (made on the device by :meth:`Decoded.render`);
        ``flips``: one bit per index (ignored when the dataset does not flip)."""
        flips = [False] * len(indices) if flips is None or not self.flip else list(flips)
        return Decoded([self.images[int(i)] for i in indices], flips, self.size)


def images_to_dataset(images: torch.Tensor, size: int | None = None, flip: bool = True) -> TensorImageDataset:
    """Dataset over an in-memory batch [N, C, H, W] in [0, 1]; ``size`` defaults to the shorter side."""
    return TensorImageDataset(images, size, flip)
