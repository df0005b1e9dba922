"""GET /coat/matches/{id} (nodes/routes.py): id validation, bounded and rounded JSON, unknown and path-like ids,
and concurrent readers; in-process against the handler (synthetic, oversized data) and through the real server
(the id of a real COAT Transfer run, from /history)."""
import asyncio
import http.client
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import comfy_harness
from browser import panel_setup

sys.path.insert(0, str(comfy_harness.REPO / "tools"))
import comfy_client  # noqa: E402

BAD_IDS = ["", "0", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg",
           "zzzzzzzzzzzzzzzz", "0123456789abcde\u00e9", " 0123456789abcdef", "0123456789abcdef ",
           "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2f", "a/b/c", "0123456789abcdef/0123456789abcdef",
           "%00", "0123456789abcdef%00", "x" * 2000]
# Dot segments: HTTP clients and servers may resolve them before routing (then: a plain 404 for another path).
DOT_IDS = ["../0123456789abcdef", "0123456789abcdef/..", "..", "../../../../etc/passwd",
           "%2e%2e/%2e%2e/pyproject.toml"]


# -- in-process: the handler and the encoder ---------------------------------------------------------------------


class _Store:
    """The pack's match store, forgetting what the tests put into it afterwards."""

    def __init__(self, module):
        self.module, self.ids = module, []
        self.STORE = module.STORE

    def put(self, data):
        self.ids.append(self.module.put(data))
        return self.ids[-1]

    def forget(self):
        for match_id in self.ids:
            self.STORE.discard(match_id)


@pytest.fixture(scope="module")
def pack(comfy_inprocess):
    """The pack's routes and match_store modules, as ComfyUI imported them."""
    mods = comfy_inprocess.NODE_CLASS_MAPPINGS["COATTransfer"].__module__.rsplit(".", 1)[0]
    routes, store = sys.modules[mods + ".routes"], _Store(sys.modules[mods + ".match_store"])
    routes.CACHE.clear()
    yield routes, store
    store.forget()
    routes.CACHE.clear()


def grid_level(scale: int, h: int, w: int, seed: int = 0) -> dict:
    """A level as nodes/matches.panel_data stores it: every cell of an h x w grid (4-decimal values)."""
    import random

    rng = random.Random(seed)
    cuv, suv, conf, confident = [], [], [], []
    for r in range(h):
        for c in range(w):
            cuv += [round((c + 0.5) / w, 4), round((r + 0.5) / h, 4)]
            suv += [round(rng.random(), 4), round(rng.random(), 4)]
            p = round(rng.random(), 4)
            conf.append(p)
            confident.append(int(p >= 0.5))
    return {"scale": scale, "grid": [h, w], "content_uv": cuv, "style_uv": suv, "confidence": conf,
            "confident": confident}


def entry(levels_per_item, n_items=1) -> dict:
    return {"version": 1, "mode": "hard", "scales": [lv["scale"] for lv in levels_per_item],
            "coverage": {str(lv["scale"]): 0.5 for lv in levels_per_item}, "content_size": [128, 96],
            "style_size": [64, 64], "items": [{"levels": levels_per_item} for _ in range(n_items)]}


def test_small_entries_are_sent_whole_and_rounded(pack):
    routes, _ = pack
    data = entry([grid_level(8, 4, 4), grid_level(4, 8, 8, seed=1)])
    body = json.loads(routes.encode("0123456789abcdef", data))
    assert body["id"] == "0123456789abcdef" and body["scales"] == [8, 4]
    assert body["content_size"] == [128, 96] and body["limits"]["max_bytes"] == routes.MAX_BYTES == 2_000_000
    for sent, stored in zip(body["items"][0]["levels"], data["items"][0]["levels"]):
        n = len(stored["confidence"])
        assert sent["total"] == sent["points"] == n and sent["stride"] == 1
        assert len(sent["content_uv"]) == len(sent["style_uv"]) == 2 * n == 2 * len(sent["confident"])
        assert sent["confidence"] == [round(c, 3) for c in stored["confidence"]]
        assert sent["style_uv"] == [round(v, 3) for v in stored["style_uv"]]
        assert sent["cell_uv"] == [round(1 / stored["grid"][1], 3), round(1 / stored["grid"][0], 3)]
        assert sent["confident"] == stored["confident"]
    assert body["items"][0]["mirrored"] is False  # entries from before mirror_search: not mirrored
    assert body["items"][0]["rotation"] == 0.0  # nor turned (rotation_search)
    assert body["items"][0]["fitted"] is False and body["items"][0]["zoom"] == 1.0  # nor re-posed (pose_fit)
    data["items"][0].update(mirrored=True, rotation=-20.000001, fitted=True, zoom=1.2345, turn=-7.04,
                            shift=[0.10004, -0.2])
    item = json.loads(routes.encode("0123456789abcdef", data))["items"][0]
    assert item["mirrored"] is True and item["rotation"] == -20.0
    assert item["fitted"] is True and item["zoom"] == 1.234 and item["turn"] == -7.0 and item["shift"] == [0.1, -0.2]


def test_big_entries_are_strided_on_the_grid_and_bounded(pack):
    routes, _ = pack
    data = entry([grid_level(8, 32, 32), grid_level(4, 64, 64, 1), grid_level(2, 96, 96, 2)],
                 n_items=4)                                         # 4 x 14,336 cells
    raw = routes.encode("0123456789abcdef", data)
    assert len(raw) <= routes.MAX_BYTES
    body = json.loads(raw)
    assert len(body["items"]) == 4
    levels = [lv for item in body["items"] for lv in item["levels"]]
    assert sum(lv["points"] for lv in levels) <= routes.MAX_POINTS
    for lv in levels:
        assert lv["points"] <= routes.MAX_POINTS_PER_LEVEL
        assert lv["points"] == len(lv["confidence"]) and len(lv["content_uv"]) == 2 * lv["points"]
        h, w = lv["grid"]
        k = lv["stride"]
        assert lv["points"] == -(-h // k) * -(-w // k)            # every k-th row and column of the grid
        us = sorted({u for u in lv["content_uv"][0::2]})
        assert us[1] - us[0] == pytest.approx(k / w, abs=2e-3)
        assert lv["cell_uv"][0] == pytest.approx(k / w, abs=2e-3)
    assert max(lv["stride"] for lv in levels) > 1
    # A smaller byte budget makes the strides grow until it fits.
    small = routes.encode("0123456789abcdef", data, max_bytes=60_000)
    assert len(small) <= 60_000 and json.loads(small)["items"][0]["levels"][0]["stride"] >= 1


def test_items_and_levels_are_capped(pack):
    routes, _ = pack
    data = entry([grid_level(s, 2, 2, s) for s in range(1, 13)], n_items=9)
    body = json.loads(routes.encode("0123456789abcdef", data))
    assert len(body["items"]) == routes.MAX_ITEMS and len(body["items"][0]["levels"]) == routes.MAX_LEVELS


async def _serve(routes, requests):
    """Run ``requests(client)`` against an aiohttp app holding only the route."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    table = web.RouteTableDef()
    routes.register(table)
    app = web.Application()
    app.add_routes(table)
    async with TestClient(TestServer(app)) as client:
        return await requests(client)


def test_handler_answers(pack, monkeypatch):
    routes, store = pack
    good = store.put(entry([grid_level(8, 4, 4)]))
    calls = []
    real = routes.encode
    monkeypatch.setattr(routes, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))

    async def requests(client):
        out = {}
        r = await client.get(f"/coat/matches/{good}")
        out["good"] = (r.status, r.headers["Content-Type"], r.headers.get("ETag"), await r.read())
        r = await client.get(f"/coat/matches/{good}", headers={"If-None-Match": out["good"][2]})
        out["etag"] = r.status
        r = await client.get("/coat/matches/0123456789abcdef")
        out["unknown"] = (r.status, await r.json())
        out["bad"] = {}
        for bad in BAD_IDS:
            r = await client.get("/coat/matches/" + bad)
            out["bad"][bad] = (r.status, r.headers.get("Content-Type", ""), await r.read())
        out["dots"] = {}
        for bad in DOT_IDS:
            r = await client.get("/coat/matches/" + bad)
            out["dots"][bad] = (r.status, await r.read())
        return out

    out = comfy_harness.run_async(_serve(routes, requests))
    status, ctype, etag, body = out["good"]
    assert status == 200 and ctype == "application/json" and etag
    assert json.loads(body)["id"] == good
    assert out["etag"] == 304
    assert out["unknown"][0] == 404 and out["unknown"][1]["error"] == "unknown_id"
    for bad, (status, ctype, raw) in out["bad"].items():
        assert status == 400, (bad, status, raw[:200])
        assert ctype.startswith("application/json") and json.loads(raw)["error"] == "invalid_id", bad
        assert b"root:" not in raw
    for bad, (status, raw) in out["dots"].items():
        assert status in (400, 404) and b"root:" not in raw and b"[project]" not in raw, (bad, status)
    assert len(calls) == 1  # encoded once, then served from the cache


def test_concurrent_readers_get_one_encoding(pack, monkeypatch):
    routes, store = pack
    data = entry([grid_level(4, 64, 64), grid_level(2, 128, 128, 1)], n_items=4)
    match_id = store.put(data)
    calls = []
    real = routes.encode
    monkeypatch.setattr(routes, "encode", lambda *a, **k: calls.append(threading.get_ident()) or real(*a, **k))

    async def requests(client):
        async def one():
            r = await client.get(f"/coat/matches/{match_id}")
            return r.status, await r.read()
        return await asyncio.gather(*(one() for _ in range(16)))

    answers = comfy_harness.run_async(_serve(routes, requests))
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    assert len(answers[0][1]) <= routes.MAX_BYTES
    assert len(calls) == 1 and calls[0] != threading.get_ident()  # once, in a worker thread


# -- the real server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_id(comfy_server):
    """The match id of a COAT Transfer run of the example workflow (found in /history, as headless clients do)."""
    panel_setup.prepare(comfy_server)
    _, entry_ = comfy_client.run_prompt(comfy_server.url, panel_setup.api_workflow(seed=7), timeout=300)
    assert entry_["status"]["status_str"] == "success"
    match, = entry_["outputs"]["4"]["coat_matches"]
    return match["id"]


def http_get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def raw_get(server, path: str):
    """GET with the path sent as is (no client-side normalisation of .. or %2F)."""
    host = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def test_server_serves_a_real_run(comfy_server, run_id):
    status, ctype, body = http_get(f"{comfy_server.url}/coat/matches/{run_id}")
    assert status == 200 and ctype.startswith("application/json") and len(body) <= 2_000_000
    assert http_get(f"{comfy_server.url}/api/coat/matches/{run_id}")[2] == body
    data = json.loads(body)
    assert data["id"] == run_id and data["scales"] == [8, 4, 2] and data["mode"] == "hard"
    assert data["content_size"] == [128, 128]
    levels = data["items"][0]["levels"]
    assert [lv["scale"] for lv in levels] == [8, 4, 2] and [lv["grid"] for lv in levels] == [[4, 4], [8, 8], [16, 16]]
    for lv in levels:
        n = lv["points"]
        assert n == lv["total"] > 0 and len(lv["content_uv"]) == len(lv["style_uv"]) == 2 * n
        assert all(0 <= v <= 1 for v in lv["style_uv"] + lv["confidence"])
        assert all(round(v, 3) == v for v in lv["content_uv"] + lv["style_uv"] + lv["confidence"])


def test_server_rejects_bad_and_unknown_ids(comfy_server, run_id):
    for path in ("/coat/matches/0123456789abcdef", "/api/coat/matches/ffffffffffffffff"):
        status, ctype, body = http_get(comfy_server.url + path)
        assert status == 404 and ctype.startswith("application/json")
        assert json.loads(body)["error"] == "unknown_id"
    for bad in BAD_IDS + [run_id.upper(), run_id + "0", run_id[:-1]]:
        for prefix in ("/coat/matches/", "/api/coat/matches/"):
            status, ctype, body = raw_get(comfy_server, prefix + urllib.parse.quote(bad, safe="/%"))
            assert status == 400, (prefix + bad, status, body[:200])
            assert json.loads(body)["error"] == "invalid_id" and b"root:" not in body
    # Raw dot segments: whatever the server's path handling does, no file content comes back.
    for bad in DOT_IDS:
        for prefix in ("/coat/matches/", "/api/coat/matches/"):
            status, _, body = raw_get(comfy_server, prefix + bad)
            assert status in (400, 404), (prefix + bad, status)
            assert b"root:" not in body and b"[project]" not in body


def test_server_concurrent_readers(comfy_server, run_id):
    urls = [f"{comfy_server.url}{p}/coat/matches/{run_id}" for p in ("", "/api")] * 12
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(http_get, urls))
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, _, body in answers}) == 1
