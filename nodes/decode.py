"""COAT Decode: content latents + alignment -> IMAGE (content structure, style appearance)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from coat_model import COATInputError

from .types import Aligned, CoatAlignment, CoatLatents, CoatModel, Encoded, LoadedModel, bchw_to_image, interrupt_point


def decode(handle: LoadedModel, content: Encoded, aligned: Aligned, n_content_layers=-1, style_strength=1.0,
           seed=-1, truncation=1.0):
    """Render the hybrid; -1 picks the checkpoint's n_content_layers / the fixed noise, truncation 1 = off."""
    content.check(handle, "content")
    n = handle.config.n_content_layers if n_content_layers < 0 else n_content_layers
    if n > handle.model.n_layers:
        raise COATInputError(f"n_content_layers must be in [0, {handle.model.n_layers}] for {handle.name} "
                             f"(or -1 for its default {handle.config.n_content_layers}), got {n_content_layers}")
    interrupt_point()
    images = handle.load(len(content.images)).decode(content.latents, aligned.alignment, n_content_layers=n,
                                 style_strength=style_strength, seed=None if seed < 0 else seed,
                                 truncation=None if truncation >= 1 else truncation)
    return bchw_to_image(images)


def decode_inputs() -> list:
    """The widgets shared with COAT Transfer."""
    return [
        io.Int.Input("n_content_layers", default=-1, min=-1, max=64,
                     tooltip="The structure <-> appearance knob: decoder layers below this take the content's "
                             "latents (structure), the rest the aligned style's (appearance). 0 = all style, "
                             "the model's layer count = the content unchanged, -1 = the checkpoint's default."),
        io.Float.Input("style_strength", default=1.0, min=0.0, max=2.0, step=0.05,
                       tooltip="Blend of the style layers: 0 keeps the content, 1 the aligned style; above 1 "
                               "exaggerates."),
        io.Int.Input("seed", default=-1, min=-1, max=2**63 - 1, control_after_generate=False,
                     tooltip="Noise seed of the decoder. -1: the model's fixed noise (deterministic, the usual "
                             "choice); any other value draws fresh noise from that seed."),
    ]


class COATDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATDecode",
            display_name="COAT Decode",
            category="COAT",
            description="Render the content's structure with the aligned style's appearance, at the content size.",
            inputs=[
                CoatModel.Input("model", tooltip="The COAT model the latents were encoded with."),
                CoatLatents.Input("content", tooltip="Latents of the content images (from COAT Encode)."),
                CoatAlignment.Input("alignment", tooltip="The alignment of the style to this content (COAT Align)."),
                *decode_inputs(),
                io.Float.Input("truncation", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Pull all latents toward the average (StyleGAN truncation psi): 1 = off, "
                                       "lower = safer, blander results."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The transferred images.")],
        )

    @classmethod
    def execute(cls, model: LoadedModel, content: Encoded, alignment: Aligned, n_content_layers=-1,
                style_strength=1.0, seed=-1, truncation=1.0) -> io.NodeOutput:
        return io.NodeOutput(decode(model, content, alignment, n_content_layers, style_strength, seed, truncation))
