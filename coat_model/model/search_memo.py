"""A memo of what :meth:`COAT.align` searches before its pixel stage: the posed styles it encodes and the matches it
finds in each pose. Aligning the same content and style latents again with the memo, say with another fill,
refinement, affine fit or median (what the quality bench's ablations change) or with fewer poses searched, re-uses
them instead of encoding and matching again; the alignment is the one made without the memo, value for value.

Entries are keyed by the latents' identity (the memo keeps them, so an identity is never reused) and, for matches, by
the options the matcher reads (:data:`MATCH_FIELDS`); a memo belongs to one model and is meant for inference (the
tensors it keeps are shared between alignments)."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")

# The AlignOptions fields COAT._match reads: two alignments that agree on these find the same matches in one pose.
MATCH_FIELDS = ("mode", "scales", "backend", "temperature", "confidence_threshold", "sim_threshold", "cycle_sigma",
                "geometric", "coarse_to_fine")


class SearchMemo:
    """Remembers, for one model, the styles it posed and the matches it found (see the module's docstring)."""

    def __init__(self):
        self._model = None  # the model bound (kept, so its identity stays its own)
        self._entries: dict[tuple, tuple[tuple, object]] = {}
        self.hits = self.misses = 0

    def bind(self, model) -> "SearchMemo":
        """This memo for ``model`` (the first model bound; another one is an error: its matches would differ)."""
        if self._model is None:
            self._model = model
        elif self._model is not model:
            raise ValueError("this SearchMemo holds another model's search: make one SearchMemo per model")
        return self

    def _get(self, key: tuple, keep: tuple, compute: Callable[[], T]) -> T:
        if key in self._entries:
            self.hits += 1
            return self._entries[key][1]
        self.misses += 1
        value = compute()
        self._entries[key] = (keep, value)  # keep: the objects whose identities the key holds
        return value

    def posed(self, style, pose, batch: int, compute: Callable[[], T]) -> T:
        """The latents of ``style`` in ``pose`` (None: as given; a Pose; a FittedPose, keyed by its matrices) for a
        content batch of ``batch``."""
        return self._get(("posed", id(style), _pose_key(pose), batch), (style,), compute)

    def matches(self, content, style, options, compute: Callable[[], T]) -> T:
        """The matches of ``content`` in ``style`` as :meth:`COAT._match` finds them with ``options``."""
        fields = tuple(getattr(options, name) for name in MATCH_FIELDS)
        return self._get(("matches", id(content), id(style), fields), (content, style), compute)


class NoMemo:
    """Align without a memo: everything computed, nothing kept (for any model)."""

    def bind(self, model) -> "NoMemo":
        return self

    def posed(self, style, pose, batch: int, compute: Callable[[], T]) -> T:
        return compute()

    def matches(self, content, style, options, compute: Callable[[], T]) -> T:
        return compute()


def _pose_key(pose) -> tuple:
    if pose is None:
        return ("as given",)
    theta = getattr(pose, "theta", None)
    if theta is None:
        return ("pose", pose)
    theta = theta.detach().to("cpu", torch.float64).contiguous()
    return ("fitted", tuple(theta.shape), theta.numpy().tobytes())
