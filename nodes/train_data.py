"""COAT Train's training data: an IMAGE batch, or a folder that must lie inside the folders the machine's owner
opened (ComfyUI's input folder, plus ``COAT_TRAIN_DATA_ROOTS``): a client of the server cannot widen them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import folder_paths
import torch

from coat_model import COATInputError

MIN_IMAGES = 2
MAX_FOLDER_OPTIONS = 500                      # the folder dropdown lists at most this many folders
DATA_ROOTS_ENV = "COAT_TRAIN_DATA_ROOTS"


def data_roots() -> list[Path]:
    """The folders COAT Train may read: ComfyUI's input folder, plus those the machine's owner lists in the
    environment variable ``COAT_TRAIN_DATA_ROOTS`` (separated by ``os.pathsep``) when starting ComfyUI. A client
    of the server cannot widen this, so a prompt over the API reads no folder the owner did not open."""
    listed = os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep)
    roots = [folder_paths.get_input_directory(), *(p.strip() for p in listed if p.strip())]
    return [Path(os.path.abspath(os.path.expanduser(r))) for r in roots]


def folder_options(depth: int = 2) -> list[str]:
    """The folder dropdown: "" (none: use 'images'), the subfolders of ComfyUI's input folder (relative, up to
    ``depth`` levels) and the extra data roots with their direct subfolders (absolute). Hidden folders are left
    out; any other allowed folder can still be typed through the API."""
    roots = data_roots()
    options: list[str] = [""]

    def walk(base: Path, rel: Path, level: int, absolute: bool) -> None:
        try:
            children = sorted(c for c in base.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for child in children:
            if len(options) >= MAX_FOLDER_OPTIONS:
                return
            options.append(str(child) if absolute else (rel / child.name).as_posix())
            if level + 1 < depth:
                walk(child, rel / child.name, level + 1, absolute)

    walk(roots[0], Path(), 0, absolute=False)
    for root in roots[1:]:
        if root.is_dir() and len(options) < MAX_FOLDER_OPTIONS and str(root) not in options:
            options.append(str(root))
            walk(root, Path(), 1, absolute=True)
    return options


def resolve_folder(folder: str) -> Path:
    """A folder path as typed (quotes and ``~`` allowed); relative paths are taken from ComfyUI's input folder.

    The path must lie inside one of :func:`data_roots` (``..`` is collapsed first; links placed inside a root by
    the owner are followed)."""
    text = folder.strip().strip('"').strip("'")
    roots = data_roots()
    path = Path(os.path.abspath(roots[0] / os.path.expanduser(text)))  # roots[0] is the input folder
    if not any(path == root or root in path.parents for root in roots):
        raise COATInputError(
            f"folder {path} is outside the folders COAT Train may read ({', '.join(map(str, roots))}). Fix: put the "
            f"images (or a link to their folder) into {roots[0]} and type its name, or start ComfyUI with "
            f"{DATA_ROOTS_ENV}={path} to allow that folder")
    return path


def training_data(images: torch.Tensor | None, folder: str, resolution: int):
    """(dataset of [3, R, R] images, a fingerprint of the data) from the IMAGE batch or the folder."""
    from coat_model.train.data.folder import ImageFolderDataset, images_to_dataset

    has_folder = bool(folder and folder.strip())
    if images is None and not has_folder:
        raise COATInputError("no training images: connect an IMAGE batch to 'images' (e.g. from Load Image, "
                             "batched) or type a folder of images into 'folder'")
    if images is not None and has_folder:
        raise COATInputError("both 'images' and 'folder' are given: use one of them (disconnect 'images' or clear "
                             "'folder')")
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise COATInputError(f"images must be a ComfyUI IMAGE [B, H, W, C], got {shape}")
        if images.shape[0] < MIN_IMAGES:
            raise COATInputError(f"only {images.shape[0]} image: random pairs need different images, so give at "
                                 f"least {MIN_IMAGES} (batch images with 'Image Batch', or use 'folder')")
        x = images.detach().clone().float().cpu().movedim(-1, 1)   # a normal tensor, not an inference tensor
        quantised = (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        digest = hashlib.sha1(quantised.numpy().tobytes()).hexdigest()[:16]
        return images_to_dataset(x, size=resolution), f"images {tuple(images.shape[:3])} sha1 {digest}"
    path = resolve_folder(folder)
    try:
        dataset = ImageFolderDataset(path, resolution)
    except ValueError as error:
        raise COATInputError(f"{error}. Fix: put images (png, jpg, webp, ...) into that folder, type another "
                             f"folder (relative paths start in {folder_paths.get_input_directory()}), or connect an "
                             "IMAGE batch instead") from None
    if len(dataset) < MIN_IMAGES:
        raise COATInputError(f"{path} holds only {len(dataset)} usable image: random pairs need different images, "
                             f"so add images until there are at least {MIN_IMAGES}")
    return dataset, f"folder {path.resolve()} ({len(dataset)} images)"
