"""COAT Align: content + style latents -> COAT_ALIGNMENT, a confidence MASK, and the match panel's data."""

from __future__ import annotations

import re

from comfy_api.v0_0_2 import io

from coat_model import COATConfig, COATInputError
from coat_model.model.config import FILL_MODES, MAX_AFFINE_RADIUS, MAX_MEDIAN_RADIUS

from .matches import ui_entry
from .types import Aligned, CoatAlignment, CoatLatents, CoatModel, Encoded, LoadedModel, bchw_to_image, interrupt_point

MODES = ["hard", "soft"]
FILLS = ["default", *FILL_MODES]
WARP_COLOURS = {"default": None, "trusted": False, "everywhere": True}  # -> COAT.align's warp_everywhere
SWITCH = {"default": None, "off": False, "on": True}  # -> COAT.align's mirror_search and pose_fit


def parse_scales(text: str, config: COATConfig) -> tuple[int, ...] | None:
    """``all`` -> None (every scale); ``coarse`` / ``fine`` -> the coarsest / finest; ``8,4`` -> those divisors."""
    t = text.strip().lower()
    if t in ("", "all"):
        return None
    if t in ("coarse", "fine"):
        return (config.scales[0] if t == "coarse" else config.scales[-1],)
    try:
        values = tuple(int(v) for v in re.split(r"[,;\s]+", t) if v)
    except ValueError:
        values = ()
    if not values or any(v not in config.scales for v in values):
        raise COATInputError(f"scales {text!r}: use 'all', 'coarse', 'fine' or a comma list of this model's "
                             f"scales {', '.join(map(str, config.scales))} (divisors of {config.resolution} px)")
    return values


def align_options(config: COATConfig, mode="hard", scales="all", fill="default", temperature=-1.0,
                  confidence_threshold=-1.0, sim_threshold=-1.0, cycle_sigma=-1.0, flow_fill=-1.0,
                  warp_colours="default", mirror_search="default", rotation_search=-1.0,
                  pose_fit="default", flow_median=-1, refine_prior=-1.0, flow_affine=-1) -> dict:
    """Node widget values -> ``COAT.align`` keywords; negative numbers and 'default' keep the checkpoint's."""
    choices = (("mode", mode, MODES), ("fill", fill, FILLS), ("warp_colours", warp_colours, WARP_COLOURS),
               ("mirror_search", mirror_search, SWITCH), ("pose_fit", pose_fit, SWITCH))
    for name, value, options in choices:
        if value not in options:
            raise COATInputError(f"{name} must be one of {list(options)}, got {value!r}")
    keep = lambda v: None if v is None or v < 0 else float(v)  # noqa: E731
    keep_radius = lambda v: None if v is None or v < 0 else v  # noqa: E731  (a whole number: align checks it)
    if keep(temperature) == 0:
        raise COATInputError("temperature must be > 0 (or negative for the checkpoint's default)")
    return dict(mode=mode, scales=parse_scales(scales, config), fill=None if fill == "default" else fill,
                temperature=keep(temperature), confidence_threshold=keep(confidence_threshold),
                sim_threshold=keep(sim_threshold), cycle_sigma=keep(cycle_sigma), flow_fill=keep(flow_fill),
                warp_everywhere=WARP_COLOURS[warp_colours], mirror_search=SWITCH[mirror_search],
                rotation_search=keep(rotation_search), pose_fit=SWITCH[pose_fit],
                flow_median=keep_radius(flow_median), refine_prior=keep(refine_prior),
                flow_affine=keep_radius(flow_affine))


def align(handle: LoadedModel, content: Encoded, style: Encoded, **options) -> Aligned:
    content.check(handle, "content")
    style.check(handle, "style")
    interrupt_point()
    model = handle.load(len(content.images))
    alignment = model.align(content.latents, style.latents, backend=handle.backend,
                                   **align_options(handle.config, **options))
    return Aligned(alignment, content, style)


def confidence_mask(handle: LoadedModel, aligned: Aligned):
    """MASK [B, H, W] at the content image size: the finest scale's confidence."""
    conf = handle.load(len(aligned.content.images)).confidence_image(aligned.content.latents, aligned.alignment)
    return bchw_to_image(conf)[..., 0]


# Widgets shared with COAT Transfer.
def mode_input() -> io.Combo.Input:
    return io.Combo.Input("mode", options=MODES, default="hard",
                          tooltip="hard: exact best matches with cycle and geometric checks (inference). "
                                  "soft: attention-weighted, smoother (the training path).")


def fill_input() -> io.Combo.Input:
    return io.Combo.Input("fill", options=FILLS, default="default",
                          tooltip="What unconfident content cells get. propagate: from confident neighbours; "
                                  "global: the mean of the matched style cells; average: the model's mean latent; "
                                  "content: their own latents; "
                                  "none: the raw matches. default: the checkpoint's choice.")


def switch_input(name: str, tooltip: str) -> io.Combo.Input:
    """An optional default / off / on combo (API prompts saved before it existed still run)."""
    return io.Combo.Input(name, options=list(SWITCH), default="default", optional=True, tooltip=tooltip)


def mirror_input() -> io.Combo.Input:
    """Shared with COAT Transfer."""
    return switch_input("mirror_search",
                        "Hard mode: also match the style's mirror image (left-right) and keep it for the "
                        "pairs it matches clearly surer: for objects seen from the other side. Costs one "
                        "more style encoding and matching (about 1.45x the time of a transfer). default: "
                        "the checkpoint's (on for the bundled one); off: the faster, style as given.")


def rotation_input() -> io.Float.Input:
    """Optional (API prompts saved before it existed still run); shared with COAT Transfer."""
    return io.Float.Input("rotation_search", default=-1.0, min=-1.0, max=45.0, step=1.0, optional=True,
                          tooltip="-1 (default) = use the checkpoint's own value (20 for the bundled one). Hard "
                                  "mode: also match the style turned by + and - this many degrees (and their "
                                  "mirrors with mirror_search) and keep the pose that matches clearly surer: for "
                                  "tilted objects. 0 = off; each angle costs two or four more style encodings and "
                                  "matchings (20 with the mirror: about 3.7x the time of a transfer).")


def pose_fit_input() -> io.Combo.Input:
    """Shared with COAT Transfer."""
    return switch_input("pose_fit",
                        "Hard mode: then re-pose the style by the scale, turn and shift that fit its "
                        "confident matches best, match again, and keep that for the pairs it matches "
                        "surer: for a style larger, smaller or off-centre against the content. Costs one "
                        "more style encoding and matching (about 15% more than the pose search). default: "
                        "the checkpoint's (on for the bundled one); off: the style as the pose search left "
                        "it.")


def median_input() -> io.Int.Input:
    """Optional (API prompts saved before it existed still run); shared with COAT Transfer."""
    return io.Int.Input("flow_median", default=-1, min=-1, max=MAX_MEDIAN_RADIUS, step=1, optional=True,
                        tooltip="-1 (default) = use the checkpoint's own value (4 for the bundled one). Hard mode: "
                                "each pixel takes the median match of the pixels within this many pixels that look "
                                "alike in the content, so the style's colours end where the content's parts end "
                                "and a stray match inside a part takes the part's. 0 = off; larger = smoother.")


def affine_input() -> io.Int.Input:
    """Optional (API prompts saved before it existed still run); shared with COAT Transfer."""
    return io.Int.Input("flow_affine", default=-1, min=-1, max=MAX_AFFINE_RADIUS, step=1, optional=True,
                        tooltip="-1 (default) = use the checkpoint's own value. Hard mode: before the median, each "
                                "pixel's match is set by the smooth (affine) map that fits the matches of the pixels "
                                "within this many pixels that look alike in the content: flat parts (skin, cloth, a "
                                "car's body) stop matching a few pixels astray. 0 = off; larger = smoother; 8-20 "
                                "at 128 px.")


def prior_input() -> io.Float.Input:
    """Optional (API prompts saved before it existed still run); shared with COAT Transfer."""
    return io.Float.Input("refine_prior", default=-1.0, min=-1.0, max=10.0, step=0.05, optional=True,
                          tooltip="-1 (default) = use the checkpoint's own value (0.4 for the bundled one). Hard "
                                  "mode, models that refine their matches below the cell: how much more alike a "
                                  "pixel farther off in the refinement's window must look to move a match there "
                                  "(the similarity penalty at the window's edge). 0 = the most alike pixel "
                                  "always wins; larger = matches stay nearer the cell match, smoother colours.")


class COATAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="COATAlign",
            display_name="COAT Align",
            category="COAT",
            description="Match every content cell to the style (dense correspondence with confidence) and align "
                        "the style latents to the content.",
            inputs=[
                CoatModel.Input("model", tooltip="The COAT model the latents were encoded with."),
                CoatLatents.Input("content", tooltip="Latents of the content (structure) images."),
                CoatLatents.Input("style", tooltip="Latents of the style (appearance) images: one for all "
                                                   "contents or one per content."),
                mode_input(),
                io.String.Input("scales", default="all",
                                tooltip="Scales to match: all, coarse, fine, or a comma list of divisors of the "
                                        "model resolution (e.g. 8,4). Other layers use the nearest matched scale."),
                fill_input(),
                io.Float.Input("temperature", default=-1.0, min=-1.0, max=1.0, step=0.001,
                               tooltip="-1 (default) = use the checkpoint's own value (0.02 for the bundled "
                                       "one). Soft mode only: softmax temperature of the matching, lower = "
                                       "sharper; try 0.01-0.1."),
                io.Float.Input("confidence_threshold", default=-1.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="-1 (default) = use the checkpoint's own value (0.5 for the bundled "
                                       "one). Matches below this confidence (0-1) count as unconfident and get "
                                       "the fill; higher = fewer, surer matches."),
                io.Float.Input("sim_threshold", default=-1.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="-1 (default) = use the checkpoint's own value (0.3 for the bundled "
                                       "one). Hard mode only: minimum descriptor similarity (cosine, 0-1) of a "
                                       "confident match; try 0.2-0.6."),
                io.Float.Input("cycle_sigma", default=-1.0, min=-1.0, max=16.0, step=0.1,
                               tooltip="-1 (default) = use the checkpoint's own value (1.0 for the bundled "
                                       "one). How fast confidence falls with the forward-backward (cycle) error, "
                                       "in cells: smaller = stricter; try 0.5-3."),
                # optional: API prompts saved before these existed still run
                io.Float.Input("flow_fill", default=-1.0, min=-1.0, max=16.0, step=0.5, optional=True,
                               tooltip="-1 (default) = use the checkpoint's own value (2 for the bundled one). "
                                       "Hard mode only: unconfident pixels take the matches of confident ones "
                                       "around them, within this many cells (0 = keep their own matches)."),
                io.Combo.Input("warp_colours", options=list(WARP_COLOURS), default="default", optional=True,
                               tooltip="Hard mode, models with the warped-style colour path: where the style's own "
                                       "colours (warped along the matches) may go. trusted: confident matches "
                                       "only, the decoder renders the rest; everywhere: on the whole object. "
                                       "default: the checkpoint's (everywhere for the bundled one)."),
                mirror_input(),
                rotation_input(),
                pose_fit_input(),
                median_input(),
                prior_input(),
                affine_input(),
            ],
            outputs=[
                CoatAlignment.Output(display_name="alignment", tooltip="Style latents aligned to the content."),
                io.Mask.Output(display_name="confidence", tooltip="Match confidence at the content image size."),
            ],
        )

    @classmethod
    def execute(cls, model: LoadedModel, content: Encoded, style: Encoded, mode="hard", scales="all",
                fill="default", temperature=-1.0, confidence_threshold=-1.0, sim_threshold=-1.0,
                cycle_sigma=-1.0, flow_fill=-1.0, warp_colours="default", mirror_search="default",
                rotation_search=-1.0, pose_fit="default", flow_median=-1, refine_prior=-1.0,
                flow_affine=-1) -> io.NodeOutput:
        aligned = align(model, content, style, mode=mode, scales=scales, fill=fill, temperature=temperature,
                        confidence_threshold=confidence_threshold, sim_threshold=sim_threshold,
                        cycle_sigma=cycle_sigma, flow_fill=flow_fill, warp_colours=warp_colours,
                        mirror_search=mirror_search, rotation_search=rotation_search, pose_fit=pose_fit,
                        flow_median=flow_median, refine_prior=refine_prior, flow_affine=flow_affine)
        interrupt_point()
        return io.NodeOutput(aligned, confidence_mask(model, aligned), ui={"coat_matches": [ui_entry(aligned)]})
