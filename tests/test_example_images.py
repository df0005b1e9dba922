"""nodes/example_images.py: the templates' sample images reach ComfyUI's input folder at load, never replacing a
user's file; the templates (example_workflows/) and their API twins name exactly those files."""
import importlib.util
import json
import logging

import comfy_harness

REPO = comfy_harness.REPO
spec = importlib.util.spec_from_file_location("coat_example_images", REPO / "nodes" / "example_images.py")
example_images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example_images)  # no ComfyUI needed: the input folder is passed in

NAMES = sorted(example_images.IMAGES)


def test_copies_into_an_empty_input_folder_once(tmp_path):
    folder = tmp_path / "input"
    assert sorted(p.name for p in example_images.install(folder)) == NAMES
    for name, source in example_images.IMAGES.items():
        assert (folder / name).read_bytes() == source.read_bytes()
    assert example_images.install(folder) == []            # already there: nothing written
    assert sorted(p.name for p in folder.iterdir()) == NAMES  # and no temporary files left behind


def test_never_replaces_what_is_there(tmp_path):
    mine = tmp_path / NAMES[0]
    mine.write_bytes(b"the user's own picture")
    (tmp_path / NAMES[1]).mkdir()                           # even a folder of that name stays
    assert example_images.install(tmp_path) == []
    assert mine.read_bytes() == b"the user's own picture"
    assert (tmp_path / NAMES[1]).is_dir()
    link = tmp_path / "other"
    link.mkdir()
    (link / NAMES[0]).symlink_to(tmp_path / "nowhere.png")  # a dangling link is a taken name too
    assert [p.name for p in example_images.install(link)] == [NAMES[1]]
    assert (link / NAMES[0]).is_symlink()


def test_an_unusable_input_folder_warns_and_loads(tmp_path, caplog):
    blocked = tmp_path / "input"
    blocked.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        assert example_images.install(blocked) == []
    assert caplog.text.count("copy it there by hand") == len(NAMES)


def test_the_templates_name_these_images():
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        ui = json.loads(path.read_text())
        loads = sorted(n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "LoadImage")
        assert loads == NAMES, path
        assert (path.with_suffix(".jpg")).is_file(), f"{path.name} has no thumbnail"
        api = json.loads((REPO / "examples" / "workflows" / f"{path.stem}_api.json").read_text())
        assert sorted(n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage") == NAMES
