"""``GET /coat/matches/{id}``: the dense match data of one COAT Align / COAT Transfer run, for the match panel.

ComfyUI mirrors the route under ``/api/coat/matches/{id}`` (the frontend's ``api.fetchApi`` uses that one).
The id comes from the node's UI output (``coat_matches[i].id``, also in ``/history``); the data comes from the
in-memory :mod:`.match_store` only: this route reads no file.

Answers (all JSON, ``application/json``):

* 200: ``{id, version, mode, scales, coverage, content_size, style_size, limits, items: [{levels: [level...],
  mirrored, rotation, fitted, zoom, turn}]}`` (``mirrored``: the pair matched the style's mirror image;
  ``rotation``: the style turned this many degrees clockwise; ``fitted``: the style re-posed by its own matches,
  shown ``zoom`` times larger, turned ``turn`` degrees clockwise and read ``shift`` (a share of the canvas) off its
  centre; the uv still point into the style as given)
  where a level is ``{scale, grid, total, points, stride, cell_uv, content_uv, style_uv, confidence,
  confident}``. ``content_uv`` / ``style_uv`` are flat ``[u0, v0, u1, v1, ...]`` positions in their own image
  ((0, 0) top-left, (1, 1) bottom-right): the match (flow) of each kept content cell. Values are rounded to
  :data:`DECIMALS` places. ``total`` is the level's cell count in the store; ``points`` the count sent, after
  keeping every ``stride``-th cell row and column so that a level has at most :data:`MAX_POINTS_PER_LEVEL` and a
  response at most :data:`MAX_POINTS` points. ``cell_uv`` is the size of one sent cell in content uv units.
* The body is never larger than :data:`MAX_BYTES` (2,000,000 bytes): past it the strides grow. In practice a
  full response (4 items x 3 scales) is about 0.4 MB.
* 400 ``{"error": "invalid_id", ...}``: the id is not 16 lowercase hex digits (path-like ids included; the route
  takes the whole rest of the path so that they get this answer instead of a plain 404).
* 404 ``{"error": "unknown_id", ...}``: no such entry (never made, or evicted: the store keeps the newest 32;
  it is emptied when the server restarts).

Entries are immutable once stored; a response is encoded once per id (off the event loop) and the same bytes go
to every reader, concurrent ones included (``ETag`` + ``If-None-Match`` -> 304).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math

from . import match_store
from .lru import LRU

ROUTE = "/coat/matches/{match_id:.*}"
MAX_BYTES = 2_000_000
MAX_POINTS = 24_576
MAX_POINTS_PER_LEVEL = 4096
MAX_ITEMS = 4
MAX_LEVELS = 8
DECIMALS = 3
LIMITS = {"max_bytes": MAX_BYTES, "max_points": MAX_POINTS, "max_points_per_level": MAX_POINTS_PER_LEVEL,
          "decimals": DECIMALS}

_log = logging.getLogger(__name__)
_registered = False


# -- encoding (pure: testable without a server) ---------------------------------------------------------------


def _ranks(values: list[float]) -> tuple[list[int], float]:
    """Index of each value among the sorted distinct values (its grid column or row), and the median step."""
    distinct = sorted({round(v, 4) for v in values})
    rank = {v: i for i, v in enumerate(distinct)}
    steps = sorted(b - a for a, b in zip(distinct, distinct[1:]))
    return [rank[round(v, 4)] for v in values], (steps[len(steps) // 2] if steps else 1.0)


def _level(level: dict, cap: int) -> dict:
    """One scale of one item, with every ``stride``-th cell row and column kept so at most ``cap`` points remain."""
    cuv, suv = level["content_uv"], level["style_uv"]
    conf, confident = level["confidence"], level["confident"]
    n = len(conf)
    if not (len(cuv) == len(suv) == 2 * n == 2 * len(confident)):
        raise ValueError(f"inconsistent level lengths at scale {level.get('scale')}")
    cols, du = _ranks(cuv[0::2])
    rows, dv = _ranks(cuv[1::2])
    stride = max(1, math.ceil(math.sqrt(n / cap))) if n > cap else 1
    while True:
        keep = [i for i in range(n) if cols[i] % stride == 0 and rows[i] % stride == 0]
        if len(keep) <= cap:
            break
        stride += 1
    r = lambda v: round(float(v), DECIMALS)  # noqa: E731
    return {
        "scale": level["scale"],
        "grid": list(level["grid"]),
        "total": n,
        "points": len(keep),
        "stride": stride,
        "cell_uv": [r(du * stride), r(dv * stride)],
        "content_uv": [r(cuv[j]) for i in keep for j in (2 * i, 2 * i + 1)],
        "style_uv": [r(suv[j]) for i in keep for j in (2 * i, 2 * i + 1)],
        "confidence": [r(conf[i]) for i in keep],
        "confident": [1 if confident[i] else 0 for i in keep],
    }


def encode(match_id: str, data: dict, max_bytes: int = MAX_BYTES) -> bytes:
    """The route's JSON body for a stored entry: subsampled, rounded, at most ``max_bytes`` long."""
    items = [item["levels"][:MAX_LEVELS] for item in data["items"][:MAX_ITEMS]]
    poses = [{"mirrored": bool(item.get("mirrored", False)), "rotation": round(float(item.get("rotation", 0.0)), 2),
              "fitted": bool(item.get("fitted", False)), "zoom": round(float(item.get("zoom", 1.0)), 3),
              "turn": round(float(item.get("turn", 0.0)), 1),
              "shift": [round(float(v), 3) for v in item.get("shift", (0.0, 0.0))]}
             for item in data["items"][:MAX_ITEMS]]
    n_levels = max(1, sum(len(levels) for levels in items))
    cap = max(1, min(MAX_POINTS_PER_LEVEL, MAX_POINTS // n_levels))
    while True:
        body = {
            "id": match_id,
            "version": data.get("version", 1),
            "mode": data.get("mode"),
            "scales": list(data["scales"]),
            "coverage": data.get("coverage", {}),
            "content_size": list(data["content_size"]),
            "style_size": list(data["style_size"]),
            "limits": LIMITS,
            "items": [{"levels": [_level(level, cap) for level in levels], **pose}
                      for levels, pose in zip(items, poses)],
        }
        raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        if len(raw) <= max_bytes or cap == 1:
            break
        cap = max(1, cap // 2)
    if len(raw) > max_bytes:
        raise ValueError(f"match data {match_id} does not fit in {max_bytes} bytes even at one point per level")
    return raw


# -- the route ----------------------------------------------------------------------------------------------


# id -> (body, etag) of the last few encoded entries (entries never change, so neither do their bodies)
CACHE: LRU[str, tuple[bytes, str]] = LRU(8)
_pending: dict[str, asyncio.Future] = {}  # id -> encoding in progress (touched on the event loop only)


def _encoded(match_id: str, data: dict) -> tuple[bytes, str]:
    body = encode(match_id, data)
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _error(web, status: int, code: str, message: str):
    return web.json_response({"error": code, "message": message}, status=status,
                             headers={"Cache-Control": "no-store"})


async def get_matches(request):
    """aiohttp handler of :data:`ROUTE`."""
    from aiohttp import web

    match_id = request.match_info.get("match_id", "")
    if not match_store.valid_id(match_id):
        return _error(web, 400, "invalid_id", "a match id is 16 lowercase hex digits (from the node's "
                                              "coat_matches output)")
    data = match_store.get(match_id)
    if data is None:
        return _error(web, 404, "unknown_id", "no match data under this id: the server keeps the newest "
                                              f"{match_store.STORE.capacity} results until it restarts; run the "
                                              "node again")
    hit = CACHE.get(match_id)
    if hit is None:
        future = _pending.get(match_id)
        if future is None:  # the first reader encodes, in a worker thread; concurrent ones await the same result
            future = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, _encoded, match_id,
                                                                                      data))
            _pending[match_id] = future
            future.add_done_callback(lambda f: _pending.pop(match_id, None))
        try:
            hit = await asyncio.shield(future)
        except Exception:
            _log.exception("COAT: could not encode match data %s", match_id)
            return _error(web, 500, "encode_failed", "the stored match data could not be encoded")
        CACHE.put(match_id, hit)
    body, etag = hit
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


MODELS_ROUTE = "/coat/models"


def loaded_models() -> list[dict]:
    """The COAT models ComfyUI's model management holds loaded now (newest first): name, devices, size."""
    import comfy.model_management as mm

    from .types import COATPatcher

    out = []
    for loaded in list(mm.current_loaded_models):
        patcher = loaded.model
        if isinstance(patcher, COATPatcher):
            out.append({"name": getattr(patcher, "coat_name", ""), "device": str(patcher.load_device),
                        "offload_device": str(patcher.offload_device), "bytes": int(patcher.model_size()),
                        "loaded_bytes": int(patcher.loaded_size())})
    return out


async def get_models(request):
    """``GET /coat/models``: ``{"loaded": [...]}`` from :func:`loaded_models` (read-only; "Unload Models" and
    ``POST /free {"unload_models": true}`` empty it)."""
    from aiohttp import web

    return web.json_response({"loaded": loaded_models()}, headers={"Cache-Control": "no-store"})


def register(routes=None) -> bool:
    """Add the routes to ``routes`` (default: the running ComfyUI's ``PromptServer.instance.routes``), once."""
    global _registered
    if routes is None:
        if _registered:
            return True
        try:
            from server import PromptServer
        except ImportError:
            return False
        if getattr(PromptServer, "instance", None) is None:
            return False
        routes = PromptServer.instance.routes
        _registered = True
    routes.get(ROUTE)(get_matches)
    routes.get(MODELS_ROUTE)(get_models)
    return True
