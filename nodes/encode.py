"""COAT Encode: IMAGE (+ object MASK) -> COAT_LATENTS."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from coat_model.model.inputs import check_images

from .types import CoatLatents, CoatModel, Encoded, LoadedModel, image_to_bchw, interrupt_point, object_mask


def encode(handle: LoadedModel, image, mask=None, name: str = "image") -> Encoded:
    x = check_images(image_to_bchw(image, name), name)  # errors name the input (content, style)
    m = object_mask(mask, image)
    interrupt_point()
    model = handle.load(x.shape[0])
    latents = model.encode(x, None if m is None else m.to(x.device))
    return Encoded(latents, image, handle.config)


class COATEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATEncode",
            display_name="COAT Encode",
            category="COAT",
            description="Encode images into COAT latents: per-layer spatial latents and matching descriptors.",
            inputs=[
                CoatModel.Input("model", tooltip="The COAT model (from COAT Model Loader)."),
                io.Image.Input("image", tooltip="Images to encode, any size (letterboxed to the model's square "
                                                "resolution and mapped back)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional object mask, white (1) = object; resized to the image. Used when "
                                      "these latents are the content: the background keeps its own look. "
                                      "LoadImage's mask is 1 where transparent, so invert it first."),
            ],
            outputs=[CoatLatents.Output(display_name="latents", tooltip="COAT latents for Align and Decode.")],
        )

    @classmethod
    def execute(cls, model: LoadedModel, image, mask=None) -> io.NodeOutput:
        return io.NodeOutput(encode(model, image, mask))
