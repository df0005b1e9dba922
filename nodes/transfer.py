"""COAT Transfer: Encode + Align + Decode in one node -> IMAGE, confidence MASK."""

from __future__ import annotations

import comfy.utils
from comfy_api.v0_0_2 import io

from coat_model.model.inputs import pair_batches

from .align import (
    affine_input, align, confidence_mask, fill_input, median_input, mirror_input, mode_input, pose_fit_input,
    prior_input, rotation_input,
)
from .decode import decode, decode_inputs
from .encode import encode
from .matches import ui_entry
from .types import CoatModel, LoadedModel, interrupt_point


class COATTransfer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATTransfer",
            display_name="COAT Transfer",
            category="COAT",
            description="Give the content images the style image's appearance, part by part, through dense "
                        "correspondence. One style for all contents, or one style per content.",
            inputs=[
                CoatModel.Input("model", tooltip="The COAT model (from COAT Model Loader)."),
                io.Image.Input("content", tooltip="Content images: their structure (shape, pose, layout) is kept."),
                io.Image.Input("style", tooltip="Style images: their appearance is transferred. Batch 1 (shared) "
                                                "or the content's batch size (pairwise)."),
                *decode_inputs(),
                mode_input(),
                fill_input(),
                io.Mask.Input("content_mask", optional=True,
                              tooltip="Optional object mask of the content, white (1) = object: only the object "
                                      "changes. LoadImage's mask is 1 where transparent, so invert it first."),
                mirror_input(),
                rotation_input(),
                pose_fit_input(),
                median_input(),
                prior_input(),
                affine_input(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The transferred images, at the content size."),
                io.Mask.Output(display_name="confidence", tooltip="Match confidence at the content size."),
            ],
        )

    @classmethod
    def execute(cls, model: LoadedModel, content, style, n_content_layers=-1, style_strength=1.0, seed=-1,
                mode="hard", fill="default", content_mask=None, mirror_search="default",
                rotation_search=-1.0, pose_fit="default", flow_median=-1, refine_prior=-1.0,
                flow_affine=-1) -> io.NodeOutput:
        pair_batches(content.shape[0], style.shape[0])  # fail before any work
        bar = comfy.utils.ProgressBar(4)
        c = encode(model, content, content_mask, "content")
        bar.update(1)
        s = encode(model, style, None, "style")
        bar.update(1)
        aligned = align(model, c, s, mode=mode, fill=fill, mirror_search=mirror_search,
                        rotation_search=rotation_search, pose_fit=pose_fit, flow_median=flow_median,
                        refine_prior=refine_prior, flow_affine=flow_affine)
        bar.update(1)
        images = decode(model, c, aligned, n_content_layers, style_strength, seed)
        bar.update(1)
        interrupt_point()
        return io.NodeOutput(images, confidence_mask(model, aligned), ui={"coat_matches": [ui_entry(aligned)]})
