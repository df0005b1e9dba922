"""Bad input through the real ComfyUI server (the API): every case ends in a clear node error that names the
problem, and the server then runs the next good prompt. Large images stay within a memory bound; 20 prompts
queued at once all finish with outputs of the right size.

One server for the module (the session's ``comfy_server``), a tiny random checkpoint, images uploaded through
tools/comfy_client.py. The rows of docs/RELIABILITY.md quote the messages these tests match.
"""
import concurrent.futures
import io
import itertools
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import coat_model
import comfy_harness

sys.path.insert(0, str(comfy_harness.REPO / "tools"))
import comfy_client  # noqa: E402

CKPT = "rel_tiny.safetensors"
OTHER = "rel_other.safetensors"                 # a valid checkpoint of another architecture
CONTENT, STYLE = "rel_content.png", "rel_style.png"
CONTENT_SIZE = (48, 40)                          # width, height
SIZES = [(48, 40), (17, 9), (64, 64), (33, 65), (100, 31)]   # the mixed sizes of the concurrency test
BIG = 8192
SEEDS = itertools.count(1)


def _noise(size, mode="RGB", seed=0) -> Image.Image:
    w, h = size
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def _upload(server, tmp: Path, name: str, image: Image.Image | bytes, subfolder: str = "") -> str:
    path = tmp / name
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path, quality=90) if name.endswith(".jpg") else image.save(path)
    return comfy_client.upload_image(server.url, path, subfolder=subfolder)


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability_api")
    models = comfy_server.root / "models" / "coat"
    torch.manual_seed(0)
    tiny = coat_model.COAT(coat_model.COATConfig.tiny())
    tiny.save(models / CKPT)
    coat_model.COAT(coat_model.COATConfig.tiny(descriptor_dim=8, w_dim=8)).save(models / OTHER)
    torch.save({"w": torch.zeros(2)}, models / "rel_pickle.safetensors")          # a pickle, renamed
    (models / "rel_text.safetensors").write_text("these are not the weights you are looking for\n" * 20)
    (models / "rel_empty.safetensors").write_bytes(b"")
    good = (models / CKPT).read_bytes()
    (models / "rel_truncated.safetensors").write_bytes(good[: len(good) // 2])
    tensors = {k: v.contiguous() for k, v in tiny.state_dict().items()}         # weights of one config...
    save_file(tensors, str(models / "rel_mismatch.safetensors"),                  # ...labelled with another
              metadata={"format": "coat", "format_version": "1",
                        "config": coat_model.COATConfig.tiny(w_dim=8).to_json()})
    save_file({"x": torch.zeros(3)}, str(models / "rel_foreign.safetensors"))     # safetensors, not COAT

    _upload(comfy_server, tmp, CONTENT, _noise(CONTENT_SIZE, seed=1))
    _upload(comfy_server, tmp, STYLE, _noise((40, 40), seed=2))
    _upload(comfy_server, tmp, "rel_gray.png", _noise((30, 44), "L", seed=3))
    _upload(comfy_server, tmp, "rel_rgba.png", _noise((36, 28), "RGBA", seed=4))
    _upload(comfy_server, tmp, "rel_1x1.png", _noise((1, 1), seed=5))
    _upload(comfy_server, tmp, "rel_bad.png", b"these bytes are no image in any format")
    png = io.BytesIO()
    _noise((64, 64), seed=6).save(png, "PNG")
    _upload(comfy_server, tmp, "rel_cut.png", png.getvalue()[: len(png.getvalue()) // 2])   # a PNG cut in half
    for i, size in enumerate(SIZES):
        _upload(comfy_server, tmp, f"rel_size_{i}.png", _noise(size, seed=10 + i))
    for i in range(2):   # a training folder holding only unreadable "images"
        _upload(comfy_server, tmp, f"broken_{i}.png", b"not a png at all", subfolder="rel_unreadable")
    (comfy_server.root / "input" / "rel_no_images").mkdir(exist_ok=True)
    (comfy_server.root / "input" / "rel_no_images" / "notes.txt").write_text("no images here")
    comfy_server.tmp = tmp
    return comfy_server


# -- prompts ----------------------------------------------------------------------------------------------------


def transfer(content=CONTENT, style=STYLE, ckpt=CKPT, **extra) -> dict:
    """LoadImage x2 -> COAT Model Loader -> COAT Transfer -> PreviewImage (node ids 1..5); ``extra`` adds or
    replaces nodes; a fresh seed makes COAT Transfer run again instead of answering from ComfyUI's cache."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": content}},
        "2": {"class_type": "LoadImage", "inputs": {"image": style}},
        "3": {"class_type": "COATModelLoader",
              "inputs": {"ckpt_name": ckpt, "device": "cpu", "dtype": "float32", "attention": "auto"}},
        "4": {"class_type": "COATTransfer",
              "inputs": {"model": ["3", 0], "content": ["1", 0], "style": ["2", 0], "n_content_layers": -1,
                         "style_strength": 1.0, "seed": next(SEEDS), "mode": "hard", "fill": "default"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    for node_id, spec in extra.items():
        if spec is None:
            prompt.pop(node_id)
        elif "class_type" in spec:
            prompt[node_id] = spec
        else:
            prompt[node_id]["inputs"].update(spec)
    return prompt


def node(class_type, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def normalize(source, n=1) -> dict:
    """n chained NormalizeImages (mean 0, std 0.001): values x 1000 each time (13 times overflow to Inf)."""
    nodes = {}
    for i in range(n):
        nodes[f"n{i}"] = node("NormalizeImages", images=[f"n{i - 1}", 0] if i else source, mean=0.0, std=0.001)
    return nodes


def train(**inputs) -> dict:
    settings = dict(folder="", run_name="rel_run", steps=2, batch_size=2, learning_rate=0.002, resolution=32, seed=0,
                    restart=False)
    settings.update(inputs)
    return {
        "1": node("LoadImage", image=CONTENT),
        "6": node("RepeatImageBatch", image=["1", 0], amount=2),
        "7": node("COATTrain", **settings),
        "8": node("PreviewImage", images=["7", 1]),
    }


def with_images(prompt: dict) -> dict:
    prompt["7"]["inputs"]["images"] = ["6", 0]
    return prompt


def view(server, ref) -> Image.Image:
    q = urllib.parse.urlencode({k: ref[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{q}", timeout=60) as r:
        return Image.open(io.BytesIO(r.read()))


def finished(server, prompt_id, timeout=300) -> dict:
    """Poll /history until the prompt is done (faster than a websocket per prompt); raise ComfyError if it failed."""
    deadline = time.monotonic() + timeout
    while not (entry := comfy_client.get_json(server.url, f"/history/{prompt_id}").get(prompt_id)):
        assert time.monotonic() < deadline, f"prompt {prompt_id} unfinished after {timeout} s"
        time.sleep(0.03)
    return comfy_client._check(entry)


def run_ok(server, prompt, out="5"):
    entry = finished(server, comfy_client.queue_prompt(server.url, prompt, "rel"))
    assert entry["status"]["status_str"] == "success"
    return entry["outputs"][out]


def expect_error(server, prompt, pattern, then=None):
    """The prompt fails (rejected at queue time or failing in a node) with a message matching ``pattern``.
    ``then``, a good prompt, is queued right behind it; returns its history entry (finished(): it succeeded)."""
    next_id = None
    try:
        prompt_id = comfy_client.queue_prompt(server.url, prompt, "rel")
        if then is not None:
            next_id = comfy_client.queue_prompt(server.url, then, "rel")
        finished(server, prompt_id)
    except comfy_client.ComfyError as error:
        message = str(error)
    else:
        pytest.fail(f"the bad prompt succeeded; expected an error matching {pattern!r}")
    assert re.search(pattern, message, re.S), message
    assert "Traceback" not in message
    print(message)  # `pytest -s` shows the observed text (docs/RELIABILITY.md quotes it)
    if then is None:
        return None
    if next_id is None:  # the bad one was rejected at queue time, before the good one was queued
        next_id = comfy_client.queue_prompt(server.url, then, "rel")
    return finished(server, next_id)


def check_good(server, entry):
    """The good prompt succeeded, with an output at the content's size."""
    image, = entry["outputs"]["5"]["images"]
    assert view(server, image).size == CONTENT_SIZE


def good_prompt_runs(server):
    entry = finished(server, comfy_client.queue_prompt(server.url, transfer(), "rel"))
    check_good(server, entry)


# -- bad input, each followed by a good prompt -------------------------------------------------------------------

E = r"node {} \({}\): (?:\w+\.)*{}"   # comfy_client's line: node id (class): module.ExceptionType: message
CASES = {
    # checkpoints
    "missing_checkpoint": (lambda: transfer(ckpt="rel_missing.safetensors"),
                           r"node 3 \(COATModelLoader\): .*COAT checkpoint 'rel_missing.safetensors' not found\. "
                           r"Searched the 'coat' model folders"),
    "pickle_renamed_to_safetensors": (lambda: transfer(ckpt="rel_pickle.safetensors"),
                                      E.format(3, "COATModelLoader", "CheckpointError: rel_pickle.safetensors is a "
                                               "PyTorch pickle/zip file renamed to .safetensors; "
                                               "COAT never unpickles")),
    "text_renamed_to_safetensors": (lambda: transfer(ckpt="rel_text.safetensors"),
                                    E.format(3, "COATModelLoader", "CheckpointError: rel_text.safetensors is not a "
                                             r"valid safetensors file \(truncated or corrupt header\)")),
    "empty_checkpoint": (lambda: transfer(ckpt="rel_empty.safetensors"),
                         E.format(3, "COATModelLoader", r"CheckpointError: rel_empty.safetensors is empty or "
                                  r"truncated \(0 bytes\)")),
    "truncated_checkpoint": (lambda: transfer(ckpt="rel_truncated.safetensors"),
                             E.format(3, "COATModelLoader", r"CheckpointError: rel_truncated.safetensors is truncated "
                                      r"\(\d+ bytes, needs \d+\): re-save it")),
    "weights_do_not_match_config": (lambda: transfer(ckpt="rel_mismatch.safetensors"),
                                    E.format(3, "COATModelLoader", "CheckpointError: rel_mismatch.safetensors does not "
                                             r"match its own config \(another architecture or a damaged file\)")),
    "safetensors_but_not_coat": (lambda: transfer(ckpt="rel_foreign.safetensors"),
                                 E.format(3, "COATModelLoader", "CheckpointError: rel_foreign.safetensors is a "
                                          r"safetensors file but not a COAT checkpoint")),
    "latents_of_another_model": (lambda: transfer(**{
        "5": None, "9": node("COATModelLoader", ckpt_name=OTHER, device="cpu", dtype="float32", attention="auto"),
        "4": node("COATEncode", model=["3", 0], image=["1", 0]),
        "6": node("COATEncode", model=["3", 0], image=["2", 0]),
        "7": node("COATAlign", model=["9", 0], content=["4", 0], style=["6", 0], mode="hard", scales="all",
                  fill="default", temperature=-1.0, confidence_threshold=-1.0, sim_threshold=-1.0, cycle_sigma=-1.0),
        "8": node("PreviewImage", images=["10", 0]), "10": node("MaskToImage", mask=["7", 1])}),
        E.format(7, "COATAlign", "COATInputError: the content latents were encoded by another COAT model than "
                 "rel_other.safetensors")),
    # images and tensors
    "rgba_tensor": (lambda: transfer(**{"6": node("JoinImageWithAlpha", image=["1", 0], alpha=["1", 1]),
                                        "4": {"content": ["6", 0]}}),
                    E.format(4, "COATTransfer", r"COATInputError: content must have 3 channels, got 4 \(RGBA: drop "
                             r"or composite the alpha channel\)")),
    "values_outside_0_1": (lambda: transfer(**normalize(["1", 0]), **{"4": {"content": ["n0", 0]}}),
                           E.format(4, "COATTransfer", r"COATInputError: content must lie in \[0, 1\], got values in "
                                    r"\[0, 1e\+03\]")),
    "inf_values": (lambda: transfer(**normalize(["1", 0], 13), **{"4": {"content": ["n12", 0]}}),
                   E.format(4, "COATTransfer", "COATInputError: content contains NaN or Inf values")),
    "nan_values": (lambda: transfer(**normalize(["2", 0], 13), **{
        "6": node("ImageBlend", image1=["n12", 0], image2=["n12", 0], blend_factor=1.0, blend_mode="difference"),
        "4": {"style": ["6", 0]}}),   # inf - inf
        E.format(4, "COATTransfer", "COATInputError: style contains NaN or Inf values")),
    "mismatched_batches_transfer": (lambda: transfer(**{
        "6": node("RepeatImageBatch", image=["1", 0], amount=2),
        "7": node("RepeatImageBatch", image=["2", 0], amount=3),
        "4": {"content": ["6", 0], "style": ["7", 0]}}),
        E.format(4, "COATTransfer", r"COATInputError: batch sizes do not pair up: 2 content image\(s\) and 3 style "
                 r"image\(s\)")),
    "mismatched_batches_align": (lambda: transfer(**{
        "5": None, "6": node("RepeatImageBatch", image=["1", 0], amount=2),
        "7": node("RepeatImageBatch", image=["2", 0], amount=3),
        "4": node("COATEncode", model=["3", 0], image=["6", 0]),
        "8": node("COATEncode", model=["3", 0], image=["7", 0]),
        "9": node("COATAlign", model=["3", 0], content=["4", 0], style=["8", 0], mode="soft", scales="all",
                  fill="default", temperature=-1.0, confidence_threshold=-1.0, sim_threshold=-1.0, cycle_sigma=-1.0),
        "10": node("MaskToImage", mask=["9", 1]), "11": node("PreviewImage", images=["10", 0])}),
        E.format(9, "COATAlign", r"COATInputError: batch sizes do not pair up: 2 content image\(s\) and 3 style")),
    "mask_batch_mismatch": (lambda: transfer(**{
        "6": node("RepeatImageBatch", image=["1", 0], amount=3),
        "7": node("ImageToMask", image=["6", 0], channel="red"),
        "4": {"content_mask": ["7", 0]}}),
        E.format(4, "COATTransfer", "COATInputError: mask batch 3 must be 1 or the image batch 1")),
    "empty_mask": (lambda: transfer(**{"6": node("SolidMask", value=0.0, width=48, height=40),
                                       "4": {"content_mask": ["6", 0]}}),
                   E.format(4, "COATTransfer", r"COATInputError: the object mask is empty \(all 0\)")),
    "unreadable_image_file": (lambda: transfer(content="rel_bad.png"),
                              E.format(1, "LoadImage",
                                       "UnidentifiedImageError: cannot identify image file .*rel_bad.png")),
    # training
    "train_zero_steps": (lambda: with_images(train(steps=0)),
                         r"node 7 \(COATTrain\): Value 0 smaller than min of 1: steps"),
    "train_negative_learning_rate": (lambda: with_images(train(learning_rate=-0.001)),
                                     r"node 7 \(COATTrain\): Value -0.001 smaller than min of 1e-06: learning_rate"),
    "train_batch_size_1": (lambda: with_images(train(batch_size=1)),
                           r"node 7 \(COATTrain\): Value 1 smaller than min of 2: batch_size"),
    "train_folder_without_images": (lambda: train(folder="rel_no_images"),
                                    E.format(7, "COATTrain", r"COATInputError: no usable images in '.*rel_no_images' "
                                             r"\(no image files found, searched recursively\).*Fix: put images")),
    "train_folder_of_unreadable_files": (lambda: train(folder="rel_unreadable"),
                                         E.format(7, "COATTrain", r"COATInputError: no usable images in "
                                                  r"'.*rel_unreadable' \(2 unreadable image files found")),
    "train_missing_folder": (lambda: train(folder="rel_not_there"),
                             E.format(7, "COATTrain",
                                      r"COATInputError: image folder '.*rel_not_there' does not exist")),
    "train_run_name_with_a_path": (lambda: with_images(train(run_name="../../escape")),
                                   E.format(7, "COATTrain", r"COATInputError: invalid run_name '../../escape'")),
    "save_model_name_with_a_path": (lambda: {"3": transfer()["3"],
                                             "4": node("COATSaveModel", model=["3", 0], filename="../../escape",
                                                       overwrite=True)},
                                    E.format(4, "COATSaveModel", r"ValueError: invalid file name '../../escape'")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_node_error_then_a_good_prompt_runs(server, case):
    build, pattern = CASES[case]
    check_good(server, expect_error(server, build(), pattern, then=transfer()))


@pytest.mark.parametrize("name, size", [("rel_gray.png", (30, 44)), ("rel_rgba.png", (36, 28)),
                                        ("rel_1x1.png", (1, 1)), ("rel_cut.png", (64, 64))])
def test_grayscale_rgba_1x1_and_truncated_files_are_transferred_at_their_size(server, name, size):
    """LoadImage makes RGB of grayscale and RGBA files (the alpha becomes its MASK output) and loads a truncated
    PNG as far as it goes (ComfyUI retries with PIL's LOAD_TRUNCATED_IMAGES): COAT transfers all at their size."""
    image, = run_ok(server, transfer(content=name, style=name))["images"]
    assert view(server, image).size == size


def test_a_mask_of_another_size_is_resized_to_the_image(server):
    """LoadImage's mask of an opaque PNG is 64x64 (zeros); inverted, a 64x64 "all object" mask for a 48x40 image.
    A second COAT Transfer gets a 7x300 mask. Both are resized to the image."""
    prompt = transfer(**{"6": node("InvertMask", mask=["1", 1]), "4": {"content_mask": ["6", 0]},
                         "7": node("SolidMask", value=1.0, width=7, height=300)})
    prompt["8"] = json.loads(json.dumps(prompt["4"]))
    prompt["8"]["inputs"].update(content_mask=["7", 0], seed=next(SEEDS))
    prompt["9"] = node("PreviewImage", images=["8", 0])
    entry = finished(server, comfy_client.queue_prompt(server.url, prompt, "rel"))
    for out in ("5", "9"):
        assert view(server, entry["outputs"][out]["images"][0]).size == CONTENT_SIZE


def _memory(pid) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def test_an_8192px_image_is_processed_within_a_memory_bound(server):
    """The model letterboxes any size to its resolution: beyond the input itself, memory is a few image-sized
    buffers (the output, its confidence mask, LoadImage's decoding), not a function of the model."""
    gradient = Image.linear_gradient("L").resize((BIG, BIG), Image.BILINEAR)
    big = _upload(server, server.tmp, "rel_big.jpg", Image.merge("RGB", (gradient, gradient.transpose(0), gradient)))
    pid = server.proc.pid
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")   # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    before = _memory(pid)["VmRSS"]
    prompt = transfer(content=big, **{"5": None, "6": node("GetImageSize", image=["4", 0]),
                                      "7": node("PreviewAny", source=["6", 0]),
                                      "8": node("PreviewAny", source=["6", 1]),
                                      "9": node("MaskToImage", mask=["4", 1]),
                                      "10": node("GetImageSize", image=["9", 0]),
                                      "11": node("PreviewAny", source=["10", 0])})
    t0 = time.monotonic()
    entry = finished(server, comfy_client.queue_prompt(server.url, prompt, "rel"))
    seconds = time.monotonic() - t0
    outputs = entry["outputs"]
    assert outputs["7"]["text"] == [str(BIG)] and outputs["8"]["text"] == [str(BIG)]   # image: 8192 x 8192
    assert outputs["11"]["text"] == [str(BIG)]                                          # confidence mask too
    peak = _memory(pid)["VmHWM"] - before
    image_bytes = BIG * BIG * 3 * 4   # one float32 IMAGE of this size: 805 MB
    print(f"8192x8192: {seconds:.1f} s, peak RSS +{peak / 2**30:.2f} GiB ({peak / image_bytes:.1f} x the image)")
    assert peak < 6 * image_bytes, f"peak RSS grew by {peak / 2**30:.2f} GiB for one {BIG}px image"
    good_prompt_runs(server)


def test_twenty_prompts_queued_at_once_all_complete_with_the_right_sizes(server):
    prompts = []
    for i in range(20):
        c, s = i % len(SIZES), (i + 2) % len(SIZES)
        p = transfer(content=f"rel_size_{c}.png", style=f"rel_size_{s}.png")
        p["4"]["inputs"]["mode"] = ("hard", "soft")[i % 2]
        prompts.append((p, SIZES[c]))
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda p: comfy_client.queue_prompt(server.url, p[0], "rel-concurrency"), prompts))
    assert len(set(ids)) == 20
    deadline = time.monotonic() + 300
    pending = dict(zip(ids, (size for _, size in prompts)))
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} of 20 prompts unfinished"
        for pid in list(pending):
            entry = comfy_client.get_json(server.url, f"/history/{pid}").get(pid)
            if entry and entry.get("status", {}).get("completed") is not None:
                assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
                image, = entry["outputs"]["5"]["images"]
                assert view(server, image).size == pending.pop(pid)
        time.sleep(0.2)
