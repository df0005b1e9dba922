"""COAT Match Preview: the matches drawn over content | style, as an IMAGE (for headless runs and chaining)."""

from __future__ import annotations

import torch

from comfy_api.v0_0_2 import io, ui

from .matches import draw_matches, pick_scale
from .types import Aligned, CoatAlignment, interrupt_point


class COATMatchPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATMatchPreview",
            display_name="COAT Match Preview",
            category="COAT",
            description="Draw the matches as lines coloured by confidence (red low, green high) over the content "
                        "(left) and the style (right).",
            inputs=[
                CoatAlignment.Input("alignment", tooltip="The alignment to draw (from COAT Align)."),
                io.Combo.Input("scale", options=["finest", "middle", "coarsest"], default="finest",
                               tooltip="Which matched scale to draw: finest = most, smallest cells."),
                io.Int.Input("max_lines", default=200, min=1, max=10000,
                             tooltip="At most this many matches, spread evenly over the content."),
                io.Float.Input("min_confidence", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Hide matches below this confidence."),
                io.Boolean.Input("show_unconfident", default=False,
                                 tooltip="Also draw matches that failed the confidence checks, in grey."),
                io.Int.Input("height", default=384, min=64, max=4096, step=8,
                             tooltip="Height of the drawing in pixels; widths keep each image's aspect."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Content | style with the match lines.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, alignment: Aligned, scale="finest", max_lines=200, min_confidence=0.0,
                show_unconfident=False, height=384) -> io.NodeOutput:
        s = pick_scale(alignment, scale)
        frames = []
        for item in range(alignment.content.images.shape[0]):
            interrupt_point()
            frames.append(draw_matches(alignment, item, s, height=height, max_lines=max_lines,
                                       min_confidence=min_confidence, show_unconfident=show_unconfident))
        images = torch.stack(frames)
        return io.NodeOutput(images, ui=ui.PreviewImage(images, cls=cls))
