"""Data for COAT: procedural faces with exact ground truth, image folders, and warp/colour augmentations."""

from .faces import (
    INSTANCES, LABELS, NUM_LABELS, Appearance, FaceDataset, FacePairs, Structure, render, sample_appearance,
    sample_pairs, sample_structure, true_correspondence, true_transfer,
)
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset, TensorImageDataset, images_to_dataset, load_image
from .warp import random_color_remap, random_warp

__all__ = [
    "LABELS", "NUM_LABELS", "INSTANCES", "Structure", "Appearance", "FacePairs", "FaceDataset",
    "sample_structure", "sample_appearance", "render", "true_transfer", "true_correspondence", "sample_pairs",
    "IMAGE_EXTENSIONS", "ImageFolderDataset", "TensorImageDataset", "images_to_dataset", "load_image",
    "random_warp", "random_color_remap",
]
