"""COAT Train in-process, against the provisioned ComfyUI: registration, a short run, errors, Cancel and resume.

Lean on purpose (a background training run shares the CPU): 32 px, batch 2, at most a few steps per run.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

import coat_model


@pytest.fixture(scope="module")
def M(comfy_inprocess):
    return comfy_inprocess.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def train_module(M):
    return sys.modules[M["COATTrain"].__module__]


def run(M, **kwargs):
    """Call the node the way ComfyUI does: under inference mode."""
    with torch.inference_mode():
        return M["COATTrain"].execute(**kwargs)


def batch(n=3, h=40, w=36, seed=0):
    with torch.inference_mode():  # like LoadImage's output: an inference tensor
        return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_base(M):
    """A tiny COAT_MODEL made under inference mode, like COAT Model Loader's output."""
    loaded = sys.modules[M["COATTrain"].__module__.rsplit(".", 1)[0] + ".types"].LoadedModel
    with torch.inference_mode():
        torch.manual_seed(1)
        model = coat_model.COAT(coat_model.COATConfig.tiny()).eval()
    return loaded(model, "sdpa", "tiny-base")


@pytest.fixture
def progress_hook():
    """Install a ComfyUI progress hook (as main.py does) for one test; yields the list of its calls."""
    import comfy.utils

    calls, previous = [], comfy.utils.PROGRESS_BAR_HOOK
    hook = {"fn": None}

    def _hook(value, total, preview, prompt_id=None, node_id=None):
        calls.append((value, total, preview))
        if hook["fn"] is not None:
            hook["fn"](value)

    comfy.utils.set_progress_bar_global_hook(_hook)
    yield calls, hook
    comfy.utils.set_progress_bar_global_hook(previous)


def test_registered_with_tooltips(comfy_inprocess, M):
    cls = M["COATTrain"]
    assert cls.GET_SCHEMA().category == "COAT"
    assert comfy_inprocess.NODE_DISPLAY_NAME_MAPPINGS["COATTrain"] == "COAT Train"
    info = cls.INPUT_TYPES()
    inputs = {**info["required"], **info.get("optional", {})}
    assert {"images", "folder", "run_name", "steps", "batch_size", "learning_rate", "resolution", "seed",
            "base_model", "restart"} <= set(inputs)
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), f"COATTrain.{name} has no tooltip"
    assert list(cls.RETURN_TYPES) == ["COAT_MODEL", "IMAGE", "LOSS_MAP"]
    assert all(cls._OUTPUT_TOOLTIPS)
    # The frontend adds "control after generate: randomize" to INT inputs named seed unless told not to; the seed
    # is part of the run, so it stays as set (reruns continue or reuse the run).
    assert inputs["seed"][1]["control_after_generate"] is False
    # Only resolutions the trainer accepts are offered.
    assert inputs["resolution"][0] == "COMBO" and inputs["resolution"][1]["options"] == [32, 64, 128, 256, 512, 1024]
    assert "UNIQUE_ID" in str(info.get("hidden"))   # io.Hidden.unique_id: the node id for its progress text


def test_three_steps_from_an_image_batch(M, progress_hook):
    import folder_paths

    calls, _ = progress_hook
    out = run(M, images=batch(), run_name="three", steps=3, batch_size=2, resolution=32, seed=0)
    handle, curve, loss_map = out.args
    assert len(loss_map["loss"]) == 3 and all(isinstance(v, float) for v in loss_map["loss"])
    assert handle.config.resolution == 32 and not handle.model.training
    assert not any(p.requires_grad for p in handle.model.parameters())
    assert curve.shape == (1, 256, 512, 3) and curve.dtype == torch.float32
    assert 0 <= curve.min() and curve.max() <= 1 and curve.std() > 0
    assert [c[0] for c in calls] == [0, 1, 2, 3] and all(c[1] == 3 for c in calls)
    previews = [c[2] for c in calls if c[2] is not None]
    assert previews and previews[0][0] == "JPEG" and previews[0][1].height >= 256
    with torch.inference_mode():  # the trained model works downstream
        x = torch.rand(1, 3, 32, 32)
        images, _ = handle.model.transfer(x, x)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    run_dir = folder_paths.get_output_directory()
    assert (coat_model.load(f"{run_dir}/coat_runs/three/coat.safetensors").config == handle.config)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "set steps to 1 or more"),
    (dict(steps=-5), "set steps to 1 or more"),
    (dict(learning_rate=0.0), "set a positive learning rate"),
    (dict(learning_rate=-0.001), "set a positive learning rate"),
    (dict(batch_size=1), "set batch_size to 2 or more"),
    (dict(resolution=48), "power of two"),
    (dict(images=None), "connect an IMAGE batch"),
    (dict(folder="somewhere"), "use one of them"),
    (dict(images="1img"), "at least 2"),
    (dict(run_name="../escape"), "invalid run_name"),
])
def test_clear_errors(M, kwargs, message):
    args = dict(images=batch(), run_name="errors", steps=2, batch_size=2, resolution=32)
    args.update(kwargs)
    if isinstance(args["images"], str):
        args["images"] = batch(n=1)
    with pytest.raises(coat_model.COATInputError, match=message):
        run(M, **args)


def test_folders_outside_the_allowed_roots_are_refused(M, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.delenv("COAT_TRAIN_DATA_ROOTS", raising=False)
    inside = Path(folder_paths.get_input_directory())
    for folder in (str(tmp_path), "../", f"{inside}/../models", "~"):
        with pytest.raises(coat_model.COATInputError, match="outside the folders COAT Train may read"):
            run(M, folder=folder, run_name="outside", steps=1, batch_size=2, resolution=32)
    # Relative names inside the input folder pass the check (and then fail for lack of images, not for the place).
    with pytest.raises(coat_model.COATInputError, match="put images"):
        run(M, folder="no_such_subfolder", run_name="inside", steps=1, batch_size=2, resolution=32)
    # The owner opens more folders when starting ComfyUI.
    monkeypatch.setenv("COAT_TRAIN_DATA_ROOTS", os.pathsep.join(["/nonexistent", str(tmp_path)]))
    with pytest.raises(coat_model.COATInputError, match="put images"):
        run(M, folder=str(tmp_path / "sub"), run_name="allowed", steps=1, batch_size=2, resolution=32)


def test_empty_or_missing_folder_is_a_clear_error(M, tmp_path, monkeypatch):
    monkeypatch.setenv("COAT_TRAIN_DATA_ROOTS", str(tmp_path))
    (tmp_path / "notes.txt").write_text("not an image")
    for folder in (str(tmp_path), str(tmp_path / "missing")):
        with pytest.raises(coat_model.COATInputError, match="put images .* into that folder"):
            run(M, folder=folder, run_name="empty", steps=2, batch_size=2, resolution=32)


def test_folder_input_trains(M, tiny_base, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("COAT_TRAIN_DATA_ROOTS", str(tmp_path))
    for i in range(2):
        Image.new("RGB", (40, 30), (60 * i, 120, 200)).save(tmp_path / f"{i}.png")
    handle, _, _ = run(M, folder=f'"{tmp_path}"', run_name="folder", steps=1, batch_size=2,
                       base_model=tiny_base).args
    assert handle.config == tiny_base.config


def test_cancel_keeps_a_resumable_state_and_requeue_resumes(M, tiny_base, progress_hook):
    """Cancel after step 1 (the flag seen by should_stop), again after step 2 (ComfyUI's hook raising inside the
    progress update), then finish: the same EMA weights as one uninterrupted run, and the loss curve of all steps."""
    import comfy.model_management as mm
    import folder_paths

    calls, hook = progress_hook
    args = dict(images=batch(), steps=3, batch_size=2, learning_rate=0.001, seed=3, base_model=tiny_base)
    base_before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}

    hook["fn"] = lambda value: mm.interrupt_current_processing(True) if value == 1 else None
    with pytest.raises(mm.InterruptProcessingException):
        run(M, run_name="cancelled", **args)
    run_dir = folder_paths.get_output_directory() + "/coat_runs/cancelled"
    from coat_model.train.state import load_state
    assert load_state(run_dir + "/train_state.safetensors")["step"] == 1

    def comfy_hook(value):  # what main.py's hook does: check the flag inside the progress update
        if value == 2:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    hook["fn"] = comfy_hook
    calls.clear()
    with pytest.raises(mm.InterruptProcessingException):
        run(M, run_name="cancelled", **args)
    assert [c[0] for c in calls] == [1, 2]          # resumed at step 1
    assert load_state(run_dir + "/train_state.safetensors")["step"] == 2
    assert not mm.processing_interrupted()

    hook["fn"] = None
    calls.clear()
    resumed, curve, loss_map = run(M, run_name="cancelled", **args).args
    assert [c[0] for c in calls] == [2, 3]
    straight, _, _ = run(M, run_name="straight", **args).args
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert curve.shape == (1, 256, 512, 3)
    losses = [line for line in open(run_dir + "/losses.jsonl").read().splitlines() if line]
    assert len(losses) == 3 and len(loss_map["loss"]) == 3
    for k, v in tiny_base.model.state_dict().items():   # fine-tuning never changes the base model
        assert torch.equal(v, base_before[k]), k


def test_changed_settings_need_restart(M, tiny_base):
    args = dict(images=batch(), run_name="changed", steps=1, batch_size=2, base_model=tiny_base)
    run(M, **args)
    with pytest.raises(coat_model.COATInputError, match="set restart to true"):
        run(M, **{**args, "batch_size": 3})
    handle, _, _ = run(M, **{**args, "batch_size": 3, "restart": True}).args
    assert handle.config == tiny_base.config


def test_unchanged_rerun_reuses_the_finished_run(M, tiny_base, progress_hook):
    """Queueing the same settings again (ComfyUI's cache emptied, e.g. after /free or a restart) does not fail
    and does not train again: the finished run's model comes back; more steps continue it."""
    calls, _ = progress_hook
    args = dict(images=batch(), run_name="rerun", steps=2, batch_size=2, seed=5, base_model=tiny_base)
    first, _, first_losses = run(M, **args).args
    calls.clear()
    again, _, again_losses = run(M, **args).args
    assert [c[0] for c in calls] == [2]                 # no step trained: the bar starts and stays at the end
    assert again_losses == first_losses
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    calls.clear()
    more, _, more_losses = run(M, **{**args, "steps": 3}).args
    assert [c[0] for c in calls] == [2, 3] and len(more_losses["loss"]) == 3
    with pytest.raises(coat_model.COATInputError, match=r"seed: 5 -> 6.*set restart to true"):
        run(M, **{**args, "seed": 6})


def test_train_frees_memory_for_itself_before_it_starts(M, tiny_base, monkeypatch):
    """A model held by ComfyUI's model management is offloaded when the device lacks what training needs."""
    import comfy.model_management as mm

    types = sys.modules[M["COATTrain"].__module__.rsplit(".", 1)[0] + ".types"]
    with torch.inference_mode():
        other = types.LoadedModel(coat_model.COAT(coat_model.COATConfig.tiny()).eval(), "sdpa", "other")
        other.load()
    assert other.is_loaded
    asked = []
    real_free = mm.free_memory

    def free_memory(memory_required, device, keep_loaded=[]):
        asked.append((memory_required, device))
        return real_free(memory_required, device, keep_loaded)

    monkeypatch.setattr(mm, "free_memory", free_memory)
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False:
                        (0, 0) if torch_free_too else 0)   # a full device
    run(M, images=batch(), run_name="frees", steps=1, batch_size=2, resolution=32, restart=True)
    assert asked and asked[0][1] == mm.get_torch_device() and asked[0][0] > 1e6
    assert not other.is_loaded


def test_folder_dropdown_lists_input_subfolders_and_data_roots(M, tmp_path, monkeypatch):
    import folder_paths

    (Path(folder_paths.get_input_directory()) / "dropdown_faces" / "more").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cats").mkdir()
    monkeypatch.setenv("COAT_TRAIN_DATA_ROOTS", str(tmp_path))
    info = M["COATTrain"].INPUT_TYPES()
    options = info["required"]["folder"][1]["options"]
    assert options[0] == "" and {"dropdown_faces", "dropdown_faces/more", str(tmp_path),
                                 str(tmp_path / "cats")} <= set(options)
    cls = M["COATTrain"]
    assert cls.validate_inputs(folder="dropdown_faces") is True
    assert cls.validate_inputs(folder="") is True
    assert "outside the folders COAT Train may read" in cls.validate_inputs(folder="/etc")


def test_the_node_decides_with_the_run_folder_rule_of_coat_train(M, tiny_base, monkeypatch):
    """The node's run folder is a coat_model.train.run_dir.RunDirectory (record node_run.json) and it resumes by the same
    rule as coat-train --resume: restart asks for no resume, otherwise a saved state is continued."""
    import folder_paths

    from coat_model.train.run_dir import NODE_RECORD, RunDirectory

    seen = []
    real = RunDirectory.resumes
    monkeypatch.setattr(RunDirectory, "resumes", lambda self, requested: seen.append(
        (self.record_name, requested)) or real(self, requested))
    args = dict(images=batch(), run_name="rule", steps=1, batch_size=2, base_model=tiny_base)
    run(M, **args, restart=True)
    run(M, **args)
    assert seen == [(NODE_RECORD, False), (NODE_RECORD, True)]
    folder = RunDirectory(Path(folder_paths.get_output_directory()) / "coat_runs" / "rule", NODE_RECORD)
    assert real(folder, True) and folder.read_record()["settings"]["batch_size"] == 2
