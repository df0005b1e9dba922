"""The COAT nodes in-process, against the provisioned ComfyUI (no server): registration, schemas, outputs,
batch rules and errors. Tiny random-weight checkpoints only (COATConfig.tiny(), 32 px)."""
import math
import sys

import pytest
import torch

import coat_model

N_LAYERS = coat_model.COATConfig.tiny().n_layers
NODE_IDS = ["COATModelLoader", "COATEncode", "COATAlign", "COATDecode", "COATTransfer", "COATMatchPreview",
            "COATSaveModel"]


@pytest.fixture(scope="module")
def ckpt_dir(comfy_inprocess, tmp_path_factory):
    """A tmp folder registered as a `coat` model folder, holding tiny.safetensors, tiny_pixel.safetensors (with
    pixel latents), tiny_refine.safetensors (matches refined below the cell, with a refinement prior) and two
    non-checkpoints."""
    import folder_paths

    d = tmp_path_factory.mktemp("coat_models")
    model = coat_model.COAT(coat_model.COATConfig.tiny())
    with torch.no_grad():  # a trained decoder uses its noise inputs; a fresh one has zero noise gains
        for name, p in model.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    model.save(d / "tiny.safetensors")
    coat_model.COAT(coat_model.COATConfig.tiny(pixel_latents=True)).save(d / "tiny_pixel.safetensors")
    torch.manual_seed(0)  # the refinement test asks these random descriptors to move some match
    coat_model.COAT(coat_model.COATConfig.tiny(pixel_latents=True, refine_dim=8, refine_radius=2, refine_prior=0.3)) \
        .save(d / "tiny_refine.safetensors")
    (d / "notes.txt").write_text("not a checkpoint")
    (d / "broken.safetensors").write_bytes(b"\x80\x04 a pickle, not safetensors")
    folder_paths.add_model_folder_path("coat", str(d))
    return d


@pytest.fixture(scope="module")
def M(comfy_inprocess, ckpt_dir):
    return comfy_inprocess.NODE_CLASS_MAPPINGS


def run(M, node_id, *args, **kwargs):
    """Call a node's execute the way ComfyUI does: under inference mode; returns the NodeOutput."""
    with torch.inference_mode():
        return M[node_id].execute(*args, **kwargs)


@pytest.fixture(scope="module")
def model(M):
    return run(M, "COATModelLoader", "tiny.safetensors").args[0]


def pack_module(M, name):
    """A module of the loaded pack (imported by ComfyUI under the pack's own package name)."""
    return sys.modules[M["COATTransfer"].__module__.rsplit(".", 1)[0] + "." + name]


def images(b, h, w, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


# -- registration and schemas ---------------------------------------------------------------------------------


def test_all_nodes_registered(comfy_inprocess, M):
    for node_id in NODE_IDS:
        schema = M[node_id].GET_SCHEMA()
        assert schema.category == "COAT"
        assert comfy_inprocess.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("COAT ")


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_input_and_output_has_a_tooltip(M, node_id):
    info = M[node_id].INPUT_TYPES()
    inputs = {**info["required"], **info.get("optional", {})}
    assert inputs
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert all(M[node_id]._OUTPUT_TOOLTIPS), f"{node_id} has an output without a tooltip"


def test_custom_socket_types(M):
    types = {node_id: list(M[node_id].RETURN_TYPES) for node_id in NODE_IDS}
    assert types["COATModelLoader"] == ["COAT_MODEL"]
    assert types["COATEncode"] == ["COAT_LATENTS"]
    assert types["COATAlign"] == ["COAT_ALIGNMENT", "MASK"]
    assert types["COATDecode"] == types["COATMatchPreview"] == ["IMAGE"]
    assert types["COATTransfer"] == ["IMAGE", "MASK"]


def test_model_folder(M, ckpt_dir):
    import folder_paths

    paths = folder_paths.get_folder_paths("coat")
    assert paths[0] == f"{folder_paths.models_dir}/coat"
    assert any(p.endswith("/checkpoints") for p in paths) and str(ckpt_dir) in paths
    names = folder_paths.get_filename_list("coat")
    assert "tiny.safetensors" in names and "notes.txt" not in names
    assert "tiny.safetensors" in M["COATModelLoader"].INPUT_TYPES()["required"]["ckpt_name"][1]["options"]


# -- loader ---------------------------------------------------------------------------------------------------


def test_loader(model):
    assert model.config.to_json() == coat_model.COATConfig.tiny().to_json()
    assert model.model.device.type == "cpu" and not model.model.training
    assert model.backend == "sdpa"  # ComfyUI runs with --cpu here: xformers is never picked


def test_loader_missing_file_names_folders_and_type(M):
    message = M["COATModelLoader"].validate_inputs("nope.safetensors")
    assert "nope.safetensors" in message and "models/coat" in message and ".safetensors" in message
    assert "not a .safetensors file" in M["COATModelLoader"].validate_inputs("model.ckpt")
    assert M["COATModelLoader"].validate_inputs("tiny.safetensors") is True
    with pytest.raises(FileNotFoundError, match="Searched the 'coat' model folders"):
        run(M, "COATModelLoader", "nope.safetensors")


def test_loader_invalid_file(M):
    with pytest.raises(ValueError, match="pickle.*never unpickles"):
        run(M, "COATModelLoader", "broken.safetensors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_loader_unavailable_device_and_backend(M):
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        run(M, "COATModelLoader", "tiny.safetensors", device="cuda")
    with pytest.raises(RuntimeError, match="xformers disabled"):
        run(M, "COATModelLoader", "tiny.safetensors", attention="xformers")
    for dtype in ("float16", "bfloat16"):
        with pytest.raises(RuntimeError, match=f"{dtype} needs a GPU"):
            run(M, "COATModelLoader", "tiny.safetensors", dtype=dtype)


# -- transfer and the step-by-step nodes ----------------------------------------------------------------------


def test_transfer_outputs(M, model):
    out = run(M, "COATTransfer", model, images(2, 40, 56), images(1, 48, 48, 1))
    image, confidence = out.args
    assert image.shape == (2, 40, 56, 3) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert confidence.shape == (2, 40, 56) and 0 <= confidence.min() and confidence.max() <= 1
    entry, = out.ui["coat_matches"]
    assert entry["scales"] == [8, 4, 2] and entry["batch"] == 2
    assert len(entry["content"]) == 2 and len(entry["style"]) == 1 and entry["content"][0]["type"] == "temp"
    data = pack_module(M, "match_store").get(entry["id"])
    assert data["content_size"] == [56, 40] and len(data["items"]) == 2
    level = data["items"][0]["levels"][-1]
    n = len(level["confidence"])
    assert level["scale"] == 2 and len(level["content_uv"]) == len(level["style_uv"]) == 2 * n > 0
    assert data["items"][0]["mirrored"] is False  # the tiny model does not search the mirror


def test_transfer_passes_mirror_and_rotation_search_and_pose_fit_to_the_alignment(M, model, monkeypatch):
    seen, fits, medians = [], [], []
    real = coat_model.COAT.align

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("mirror_search"), kwargs.get("rotation_search")))
        fits.append(kwargs.get("pose_fit"))
        medians.append(kwargs.get("flow_median"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(coat_model.COAT, "align", spy)

    def transfer(**kw):
        return run(M, "COATTransfer", model, images(1, 32, 32), images(1, 32, 32, 1), **kw).args[0]

    outs = {m: transfer(mirror_search=m) for m in ("default", "off", "on")}
    assert seen == [(None, None), (False, None), (True, None)]  # default: the checkpoint's (off for this tiny model)
    assert torch.equal(outs["default"], outs["off"])
    seen.clear()
    turned = {r: transfer(rotation_search=r) for r in (-1.0, 0.0, 20.0)}
    assert seen == [(None, None), (None, 0.0), (None, 20.0)] and torch.equal(turned[-1.0], turned[0.0])
    optional = M["COATTransfer"].INPUT_TYPES()["optional"]
    seen.clear()
    fitted = {f: transfer(pose_fit=f) for f in ("default", "off", "on")}
    assert fits[-3:] == [None, False, True] and torch.equal(fitted["default"], fitted["off"])
    assert {"mirror_search", "rotation_search", "pose_fit", "flow_median"} <= set(optional)  # older prompts validate
    medians.clear()
    smoothed = {r: transfer(flow_median=r) for r in (-1, 0, 2)}
    assert medians == [None, 0, 2] and torch.equal(smoothed[-1], smoothed[0])
    with pytest.raises(ValueError, match="mirror_search must be one of"):
        run(M, "COATTransfer", model, images(1, 32, 32), images(1, 32, 32, 1), mirror_search="sometimes")


def test_pairwise_batches(M, model):
    image, _ = run(M, "COATTransfer", model, images(3, 32, 32), images(3, 32, 32, 1)).args
    assert image.shape == (3, 32, 32, 3)


def test_batches_that_do_not_pair_up(M, model):
    with pytest.raises(ValueError, match="2 content image.*3 style image"):
        run(M, "COATTransfer", model, images(2, 32, 32), images(3, 32, 32))


def test_steps_equal_transfer(M, model):
    content, style = images(2, 40, 56), images(1, 48, 48, 1)
    c = run(M, "COATEncode", model, content).args[0]
    s = run(M, "COATEncode", model, style).args[0]
    aligned, confidence = run(M, "COATAlign", model, c, s).args
    image = run(M, "COATDecode", model, c, aligned).args[0]
    expected, expected_conf = run(M, "COATTransfer", model, content, style).args
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(confidence, expected_conf)


def test_checkpoints_with_pixel_latents_run_stage_by_stage_and_in_one_node(M):
    model = run(M, "COATModelLoader", "tiny_pixel.safetensors").args[0]
    content, style = images(2, 40, 56), images(1, 48, 48, 1)
    c = run(M, "COATEncode", model, content).args[0]
    s = run(M, "COATEncode", model, style).args[0]
    for scales in ("all", "coarse"):  # the full-resolution latents follow whichever scale was matched last
        aligned, _ = run(M, "COATAlign", model, c, s, scales=scales).args
        image = run(M, "COATDecode", model, c, aligned).args[0]
        assert image.shape == (2, 40, 56, 3) and torch.isfinite(image).all()
    aligned, confidence = run(M, "COATAlign", model, c, s).args
    expected, expected_conf = run(M, "COATTransfer", model, content, style).args
    torch.testing.assert_close(run(M, "COATDecode", model, c, aligned).args[0], expected)
    torch.testing.assert_close(confidence, expected_conf)


def test_decode_knobs(M, model):
    c = run(M, "COATEncode", model, images(1, 32, 32)).args[0]
    s = run(M, "COATEncode", model, images(1, 32, 32, 1)).args[0]
    aligned = run(M, "COATAlign", model, c, s).args[0]
    decode = lambda **kw: run(M, "COATDecode", model, c, aligned, **kw).args[0]  # noqa: E731
    all_content, all_style = decode(n_content_layers=N_LAYERS), decode(n_content_layers=0)
    assert not torch.allclose(all_content, all_style)
    torch.testing.assert_close(decode(n_content_layers=0, style_strength=0.0), all_content)
    assert not torch.allclose(decode(seed=1), decode(seed=2))
    torch.testing.assert_close(decode(seed=-1), decode())
    with pytest.raises(ValueError, match=rf"n_content_layers must be in \[0, {N_LAYERS}\]"):
        decode(n_content_layers=N_LAYERS + 1)


def test_align_options(M, model):
    c = run(M, "COATEncode", model, images(1, 32, 32)).args[0]
    s = run(M, "COATEncode", model, images(1, 32, 32, 1)).args[0]
    align = lambda **kw: run(M, "COATAlign", model, c, s, **kw).args[0].alignment  # noqa: E731
    assert align(scales="coarse").scales == (8,)
    assert align(scales="fine").scales == (2,)
    assert align(scales="2, 8").scales == (8, 2)
    assert align(mode="soft", temperature=0.05, fill="content").mode == "soft"
    assert align(confidence_threshold=1.0).options.confidence_threshold == 1.0
    assert align().options.sim_threshold == model.config.sim_threshold  # -1: the checkpoint's default
    assert align().options.flow_fill == model.config.flow_fill and align(flow_fill=3.0).options.flow_fill == 3.0
    assert align(flow_fill=0.0).options.flow_fill == 0.0  # 0 turns it off; only negatives mean the checkpoint's
    with pytest.raises(ValueError, match="scales '3'.*8, 4, 2"):
        align(scales="3")
    with pytest.raises(ValueError, match="warp_colours must be one of"):
        align(warp_colours="sometimes")
    options = pack_module(M, "align").align_options
    assert [options(model.config, warp_colours=w)["warp_everywhere"] for w in ("default", "trusted", "everywhere")] \
        == [None, False, True]
    assert [options(model.config, mirror_search=m)["mirror_search"] for m in ("default", "off", "on")] \
        == [None, False, True]
    assert align().mirrored is None and align(mirror_search="on").mirrored.shape == (1,)
    assert align().rotation is None and align(rotation_search=10.0).rotation.shape == (1,)
    assert align(rotation_search=10.0).options.rotation_search == 10.0
    assert align().fitted is None and align(pose_fit="on").fitted.shape == (1,)
    assert [options(model.config, pose_fit=f)["pose_fit"] for f in ("default", "off", "on")] == [None, False, True]
    with pytest.raises(ValueError, match="pose_fit must be one of"):
        align(pose_fit="sometimes")
    assert [options(model.config, flow_median=r)["flow_median"] for r in (-1, 0, 3)] == [None, 0, 3]
    assert align(flow_median=2).options.flow_median == 0  # this tiny model has no per-pixel matches to take it of
    with pytest.raises(ValueError, match="flow_median is a window radius in pixels, a whole number"):
        align(flow_median=2.5)  # an API prompt's float is checked, not rounded
    with pytest.raises(ValueError, match="mirror_search must be one of"):
        align(mirror_search="maybe")


def _record_align(monkeypatch, keyword: str) -> list:
    """The value of ``keyword`` each later ``COAT.align`` call is given (None: not given), in order."""
    seen = []
    real = coat_model.COAT.align

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get(keyword))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(coat_model.COAT, "align", spy)
    return seen


def test_refine_prior_reaches_the_refinement_from_both_nodes(M, monkeypatch):
    """-1: the checkpoint's prior; 0 and other values override it (and move the refined matches); out of range is
    refused with the range; COAT Transfer passes it the same way."""
    model = run(M, "COATModelLoader", "tiny_refine.safetensors").args[0]
    content, style = images(1, 32, 32), images(1, 32, 32, 1)
    c, s = run(M, "COATEncode", model, content).args[0], run(M, "COATEncode", model, style).args[0]
    align = lambda **kw: run(M, "COATAlign", model, c, s, **kw).args[0].alignment  # noqa: E731
    assert align().options.refine_prior == pytest.approx(0.3)
    assert align(refine_prior=0.0).options.refine_prior == 0.0 and align(refine_prior=2.5).options.refine_prior == 2.5
    free, pinned = align(refine_prior=0.0).refined.flow, align(refine_prior=10.0).refined.flow
    assert not torch.equal(free, pinned)  # random descriptors: some pixel finds a more alike one off its cell match
    torch.testing.assert_close(align(refine_prior=-1.0).refined.flow, align(refine_prior=0.3).refined.flow)
    with pytest.raises(ValueError, match="refine_prior is a similarity penalty"):
        align(refine_prior=11.0)  # an API prompt past the widget's range
    assert "refine_prior" in M["COATAlign"].INPUT_TYPES()["optional"]  # API prompts saved before it still run
    priors = _record_align(monkeypatch, "refine_prior")
    outs = [run(M, "COATTransfer", model, content, style, refine_prior=p).args[0] for p in (-1.0, 0.3, 0.0)]
    assert priors == [None, 0.3, 0.0] and torch.equal(outs[0], outs[1])
    assert "refine_prior" in M["COATTransfer"].INPUT_TYPES()["optional"]


def test_latents_from_another_model(M, model, tmp_path):
    other = coat_model.COAT(coat_model.COATConfig.tiny(w_dim=8))
    other.save(tmp_path / "other.safetensors")
    handle = pack_module(M, "types").LoadedModel(coat_model.load(tmp_path / "other.safetensors"), "sdpa", "other")
    c = run(M, "COATEncode", handle, images(1, 32, 32)).args[0]
    s = run(M, "COATEncode", model, images(1, 32, 32)).args[0]
    with pytest.raises(ValueError, match="encoded by another COAT model"):
        run(M, "COATAlign", model, c, s)


def test_object_mask(M, model):
    content, style = images(1, 40, 40), images(1, 40, 40, 1)
    mask = torch.zeros(1, 20, 20)
    mask[:, 5:15, 5:15] = 1  # another size than the image: resized
    masked, _ = run(M, "COATTransfer", model, content, style, content_mask=mask).args
    plain, _ = run(M, "COATTransfer", model, content, style).args
    assert masked.shape == plain.shape and not torch.allclose(masked, plain)
    with pytest.raises(ValueError, match="object mask is empty"):
        run(M, "COATTransfer", model, content, style, content_mask=torch.zeros(1, 40, 40))


@pytest.mark.parametrize("bad, message", [
    (torch.rand(1, 32, 32), r"IMAGE \[B, H, W, C\]"),
    (torch.rand(1, 32, 32, 4), "RGBA"),
    (torch.full((1, 32, 32, 3), float("nan")), "NaN"),
])
def test_bad_images(M, model, bad, message):
    with pytest.raises(ValueError, match=message):
        run(M, "COATTransfer", model, bad, images(1, 32, 32))


def test_interrupt_between_stages(M, model):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(M, "COATTransfer", model, images(1, 32, 32), images(1, 32, 32))
    finally:
        mm.interrupt_current_processing(False)


# -- matches: geometry, preview, store ------------------------------------------------------------------------


def test_matches_of_an_image_with_itself_are_the_identity(M, model):
    """Non-square image (letterboxed): confident self-matches land on the same uv, within about a cell."""
    x = images(1, 40, 64, 3)
    e = run(M, "COATEncode", model, x).args[0]
    aligned = run(M, "COATAlign", model, e, e).args[0]
    m = pack_module(M, "matches").cell_matches(aligned, 2, 0)
    ok = m["confident"]
    assert ok.float().mean() > 0.5
    assert (m["content_uv"][ok] - m["style_uv"][ok]).abs().max() < 2 / 16 + 1e-4
    assert ((m["content_uv"] >= 0) & (m["content_uv"] <= 1)).all()  # letterbox cells are left out


def test_match_preview(M, model):
    c = run(M, "COATEncode", model, images(2, 40, 60)).args[0]
    s = run(M, "COATEncode", model, images(1, 50, 50, 1)).args[0]
    aligned = run(M, "COATAlign", model, c, s).args[0]
    out = run(M, "COATMatchPreview", aligned, height=100, show_unconfident=True)
    image = out.args[0]
    assert image.shape == (2, 100, 150 + 100, 3) and image.dtype == torch.float32
    assert len(out.ui.as_dict()["images"]) == 2
    none = run(M, "COATMatchPreview", aligned, height=100, min_confidence=1.01).args[0]
    assert (image - none).abs().amax() > 0.1  # the lines are drawn


def test_match_store(M):
    store = pack_module(M, "match_store").MatchStore(capacity=2)
    a, b, c = (store.put({"n": i}) for i in range(3))
    assert len(store) == 2 and store.get(a) is None and store.get(c) == {"n": 2}
    assert store.get("../../etc/passwd") is None and store.get(b.upper()) is None


# -- save -----------------------------------------------------------------------------------------------------


def test_save_model(M, model, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    names = [run(M, "COATSaveModel", model, "my model").args[0] for _ in range(2)]
    assert names == ["my model.safetensors", "my model_00001.safetensors"]
    assert run(M, "COATSaveModel", model, "my model", overwrite=True).args[0] == "my model.safetensors"
    reloaded = coat_model.load(tmp_path / "coat" / "my model.safetensors")
    assert reloaded.config.to_json() == model.config.to_json()
    torch.testing.assert_close(reloaded.state_dict(), model.model.state_dict())
    for bad in ("../escape", "/abs/path", "sub/dir", ""):
        with pytest.raises(ValueError, match="invalid file name"):
            run(M, "COATSaveModel", model, bad)


def test_models_go_through_comfy_model_management(M, model):
    """COAT_MODEL is a ModelPatcher-managed model: the nodes load it through comfy.model_management, which then
    holds it; ComfyUI's unload (what "Unload Models" and POST /free do) releases it and the next node loads it."""
    import comfy.model_management as mm

    types = pack_module(M, "types")
    assert isinstance(model.patcher, types.COATPatcher)
    content, style = images(1, 32, 32, seed=1), images(1, 32, 32, seed=2)
    first = run(M, "COATTransfer", model, content, style).args[0]
    assert model.is_loaded and model.patcher.loaded_size() == model.patcher.model_size() > 0
    mm.unload_all_models()
    assert not model.is_loaded and model.patcher.loaded_size() == 0
    assert model.model.device == model.offload_device
    again = run(M, "COATTransfer", model, content, style).args[0]
    assert model.is_loaded and torch.equal(first, again)


@pytest.mark.parametrize("node_id", NODE_IDS + ["COATTrain"])
def test_every_node_has_a_help_page_naming_its_inputs_and_outputs(M, node_id):
    """The frontend's node help (the info button, the node library) reads <web>/docs/<NodeClass>.md."""
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "web" / "docs" / f"{node_id}.md"
    assert page.is_file(), f"no help page {page}"
    text = page.read_text()
    assert text.startswith(f"# {M[node_id].GET_SCHEMA().display_name}\n")
    info = M[node_id].INPUT_TYPES()
    for name in {**info["required"], **info.get("optional", {})}:
        assert f"**{name}**" in text, f"{node_id}.md does not explain the input {name}"
    for name in M[node_id].RETURN_NAMES:
        assert f"**{name}**" in text, f"{node_id}.md does not explain the output {name}"


def test_inputs_that_default_to_the_checkpoints_value_say_so(M):
    """Align's -1 floats: the tooltip starts with what -1 means, the help page explains it."""
    from pathlib import Path

    info = M["COATAlign"].INPUT_TYPES()
    inputs = {**info["required"], **info["optional"]}
    page = (Path(__file__).resolve().parent.parent / "web" / "docs" / "COATAlign.md").read_text()
    # optional: API prompts saved before them still validate
    assert {"flow_fill", "warp_colours", "mirror_search", "rotation_search", "pose_fit", "flow_median",
            "refine_prior", "flow_affine"} <= set(info["optional"])
    for name in ("temperature", "confidence_threshold", "sim_threshold", "cycle_sigma", "flow_fill",
                 "rotation_search", "flow_median", "refine_prior", "flow_affine"):
        spec = inputs[name][1]
        assert spec["default"] == -1.0 and spec["tooltip"].startswith("-1 (default) = use the checkpoint's")
        assert f"`{name}`" in page.split("### The -1 inputs")[1]


def test_the_panel_words_a_fitted_pose_as_the_style_s_zoom_and_turn(M):
    """``fitted_pose``: the map the style was re-posed by, read back as how much larger it was shown and how far it
    was turned (after undoing the mirror's flip)."""
    from types import SimpleNamespace

    fitted_pose = pack_module(M, "matches").fitted_pose
    t = math.radians(10.0)
    turn = torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) / 1.25  # shown 1.25x, 10 deg
    flip = torch.diag(torch.tensor([-1.0, 1.0]))
    poses = torch.stack([torch.cat([m, torch.tensor([[0.1], [0.0]])], 1) for m in (turn, flip @ turn, turn)])
    a = SimpleNamespace(fitted=torch.tensor([True, True, False]), pose=poses, mirrored=torch.tensor([False, True, False]))
    assert fitted_pose(a, 0) == fitted_pose(a, 1) == {"fitted": True, "zoom": 1.25, "turn": 10.0, "shift": [0.05, 0.0]}
    assert fitted_pose(a, 2) == {"fitted": False}
    assert fitted_pose(SimpleNamespace(fitted=None), 0) == {"fitted": False}


def test_flow_affine_reaches_the_pixel_stage_from_both_nodes(M, monkeypatch):
    """-1: the checkpoint's (0 for this one); other values fit the refined matches; out of range or a float is
    refused with the range; COAT Transfer passes it the same way; both take it as optional (older prompts)."""
    model = run(M, "COATModelLoader", "tiny_refine.safetensors").args[0]
    content, style = images(1, 32, 32), images(1, 32, 32, 1)
    c, s = run(M, "COATEncode", model, content).args[0], run(M, "COATEncode", model, style).args[0]
    align = lambda **kw: run(M, "COATAlign", model, c, s, **kw).args[0].alignment  # noqa: E731
    assert align().options.flow_affine == 0 and align(flow_affine=4).options.flow_affine == 4
    assert not torch.equal(align(flow_affine=4).refined.flow, align().refined.flow)
    torch.testing.assert_close(align(flow_affine=-1).refined.flow, align(flow_affine=0).refined.flow)
    for bad in (33, 2.5):  # past the widget's range, and an API prompt's float: checked, not rounded
        with pytest.raises(ValueError, match="flow_affine is a window radius in pixels"):
            align(flow_affine=bad)
    radii = _record_align(monkeypatch, "flow_affine")
    outs = [run(M, "COATTransfer", model, content, style, flow_affine=r).args[0] for r in (-1, 0, 6)]
    assert radii == [None, 0, 6] and torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    for node in ("COATAlign", "COATTransfer"):
        assert "flow_affine" in M[node].INPUT_TYPES()["optional"]
