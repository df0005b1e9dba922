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


@pytest.fixture(scope="session")
def comfy_inprocess(tmp_path_factory):
    """ComfyUI imported into the test process with this repo loaded as a custom node pack.

    Returns ComfyUI's ``nodes`` module: ``nodes.NODE_CLASS_MAPPINGS[node_id]`` gives V1 classes and the V3
    ``io.ComfyNode`` classes alike. Run coroutines with ``comfy_harness.run_async(coro)``.
    """
    yield comfy_harness.load_inprocess(tmp_path_factory.mktemp("comfy_inproc"))
    comfy_harness.close_inprocess()
