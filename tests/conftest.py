"""Shared fixtures. ComfyUI ones only for now (see tests/comfy_harness.py); others may add theirs below."""
import pytest

import comfy_harness


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI server (``--cpu``, free port, tmp input/output/temp/user dirs) for the whole session.

    Yields an object with ``.url`` (``http://127.0.0.1:PORT``), ``.log_path``, ``.root`` (tmp dir holding
    input/ output/ temp/ user/ and models/coat/, an extra `coat` model folder) and ``.proc``. The pack is loaded
    via the ``custom_nodes/comfyui-coat`` link.
    """
    server = comfy_harness.start_server(tmp_path_factory.mktemp("comfy_server"))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=sorted(comfy_harness.FRONTENDS))
def ui_server(request, tmp_path_factory):
    """A ComfyUI server for the browser tests, once per frontend: ``newest`` (1.58.1, the session's
    ``comfy_server``) and ``pinned`` (the version ComfyUI's requirements.txt pins; a second server). ``.frontend``
    says which and ``.frontend_version`` its version."""
    kind = request.param
    version = comfy_harness.frontend_version(kind)
    if kind == "newest":
        server = request.getfixturevalue("comfy_server")
        server.frontend, server.frontend_version = kind, version
        yield server
        return
    server = comfy_harness.start_server(tmp_path_factory.mktemp(f"comfy_server_{kind}"),
                                        frontend=comfy_harness.frontend_dir(kind))
    server.frontend, server.frontend_version = kind, version
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy_inprocess(tmp_path_factory):
    """ComfyUI imported into the test process with this repo loaded as a custom node pack.

    Returns ComfyUI's ``nodes`` module: ``nodes.NODE_CLASS_MAPPINGS[node_id]`` gives V1 classes and the V3
    ``io.ComfyNode`` classes alike. Run coroutines with ``comfy_harness.run_async(coro)``.
    """
    yield comfy_harness.load_inprocess(tmp_path_factory.mktemp("comfy_inproc"))
    comfy_harness.close_inprocess()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, through Playwright) for the browser tests, one per session."""
    from playwright.sync_api import sync_playwright

    from browser import comfy_page

    executable = comfy_page.chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=comfy_page.CHROMIUM_FLAGS)
        yield b
        b.close()


def pytest_collection_modifyitems(config, items):
    """Browser tests last: the session's Playwright keeps an event loop and driver threads alive in this process,
    and later tests fork (DataLoader workers) and run their own loops; a fork beside those threads can hang."""
    browser = [item for item in items if "browser" in item.module.__name__]
    items[:] = [item for item in items if item not in browser] + browser


@pytest.fixture(autouse=True)
def _denormals_as_the_test_found_them():
    """A CPU Trainer flushes denormals to zero in its thread (coat_model/train/denormals.py), which is the pytest
    thread here: put the default back after each test, so that what runs next (hypothesis checks the IEEE default)
    does not depend on the order of the tests."""
    import torch

    yield
    torch.set_flush_denormal(False)
