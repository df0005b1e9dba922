"""COAT Model Loader and COAT Save Model."""

from __future__ import annotations

import os
import re

import comfy.model_management as mm
import torch
from comfy_api.v0_0_2 import io, ui

import coat_model
from coat_model.model.attention import xformers_available

from . import paths
from .types import CoatModel, LoadedModel

DEVICES = ["auto", "cpu", "cuda", "mps"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ["auto", "xformers", "sdpa", "chunked"]


def pick_device(name: str) -> torch.device:
    """``auto`` follows ComfyUI (``--cpu`` etc.); an explicit device must exist on this machine."""
    if name == "auto":
        return mm.get_torch_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was chosen but this PyTorch sees no CUDA GPU: choose 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' was chosen but Apple MPS is not available here: choose 'auto' or 'cpu'")
    return torch.device(name)


def offload_device(device: torch.device) -> torch.device:
    """Where the weights rest between uses: the CPU, or the GPU itself under ``--highvram`` / ``--gpu-only``
    (ComfyUI's choice for diffusion models); a CPU model stays on the CPU."""
    if device.type == "cpu":
        return device
    offload = mm.unet_offload_device()
    return device if offload.type == device.type else offload


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {name!r}")
    if device.type == "cpu" and name != "float32":
        raise RuntimeError(f"{name} needs a GPU (half-precision resizing is not available on the CPU): "
                           "choose float32")
    return DTYPES[name]


def pick_backend(name: str, device: torch.device) -> str:
    """Attention backend of the soft path; ``auto`` uses xformers only when ComfyUI has it enabled."""
    if name == "xformers":
        if not mm.xformers_enabled():
            raise RuntimeError("attention 'xformers' was chosen but ComfyUI has xformers disabled or missing "
                               "(see the startup log): choose 'auto' or 'sdpa'")
        if not xformers_available(device.type):
            raise RuntimeError(f"xformers does not run on {device}: choose 'auto' or 'sdpa'")
        return name
    if name == "auto":
        return "xformers" if mm.xformers_enabled() and xformers_available(device.type) else "sdpa"
    return name


class COATModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATModelLoader",
            display_name="COAT Model Loader",
            category="COAT",
            description="Load a COAT checkpoint (.safetensors) from the 'coat' model folders.",
            inputs=[
                io.Combo.Input("ckpt_name", options=paths.checkpoints(),
                               tooltip="A COAT .safetensors checkpoint from models/coat, an extra_model_paths.yaml "
                                       "'coat:' entry, or the pack's checkpoints/ folder."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="Where the model runs. auto follows ComfyUI (its GPU, or the CPU with --cpu)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="float32",
                               tooltip="Weight precision. float32 works everywhere; float16 and bfloat16 (GPU only) "
                                       "save memory. Correlations always run in float32 or float16."),
                io.Combo.Input("attention", options=BACKENDS, default="auto",
                               tooltip="Attention backend of soft alignment. auto: xformers when ComfyUI has it "
                                       "enabled, else PyTorch SDPA. chunked: exact and low-memory, slower."),
            ],
            outputs=[CoatModel.Output(display_name="model", tooltip="The loaded COAT model.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        try:
            paths.resolve(ckpt_name)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, **_) -> str:
        """Reload when the file on disk changes, not only when another file is chosen."""
        try:
            st = os.stat(paths.resolve(ckpt_name))
            return f"{ckpt_name}:{st.st_mtime_ns}:{st.st_size}"
        except (ValueError, FileNotFoundError, OSError):
            return ckpt_name

    @classmethod
    def execute(cls, ckpt_name, device="auto", dtype="float32", attention="auto") -> io.NodeOutput:
        path = paths.resolve(ckpt_name)
        dev = pick_device(device)
        offload = offload_device(dev)
        model = coat_model.load(path, device=offload, dtype=pick_dtype(dtype, dev))  # nodes load it when they run
        return io.NodeOutput(LoadedModel(model, pick_backend(attention, dev), ckpt_name, dev, offload))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*")


def save_path(filename: str, overwrite: bool) -> str:
    """``models/coat/<filename>.safetensors``; without ``overwrite`` an existing file gets a numbered sibling."""
    stem = filename.strip().removesuffix(".safetensors")
    if not _NAME.fullmatch(stem) or ".." in stem:
        raise ValueError(f"invalid file name {filename!r}: use letters, digits, spaces, '_', '-' and '.', "
                         "no folders (the file goes into models/coat)")
    folder = paths.default_dir()
    path = os.path.join(folder, stem + ".safetensors")
    counter = 1
    while not overwrite and os.path.exists(path):
        path = os.path.join(folder, f"{stem}_{counter:05}.safetensors")
        counter += 1
    return path


class COATSaveModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATSaveModel",
            display_name="COAT Save Model",
            category="COAT",
            description="Write a COAT model to models/coat as .safetensors (weights + config), loadable by "
                        "COAT Model Loader.",
            inputs=[
                CoatModel.Input("model", tooltip="The COAT model to save (e.g. a trained or fine-tuned one)."),
                io.String.Input("filename", default="coat_custom",
                                tooltip="File name in models/coat, without folders; .safetensors is added."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name. Off: a numbered name "
                                         "(name_00001.safetensors) is used instead, nothing is replaced."),
            ],
            outputs=[io.String.Output(display_name="ckpt_name", tooltip="The saved file's name in models/coat.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: LoadedModel, filename: str, overwrite: bool = False) -> io.NodeOutput:
        path = save_path(filename, overwrite)
        model.model.save(path, metadata={"source": model.name})
        name = os.path.basename(path)
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {path}"))
