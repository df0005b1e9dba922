"""The pack as ComfyUI's tooling sees it: `comfy-test lint` (Python syntax level and JavaScript level) passes,
requirements never pin torch or xformers, and pyproject carries the [tool.comfy] table."""

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_comfy_test_lint_passes_on_the_whole_pack():
    tool = Path(sys.executable).with_name("comfy-test")
    assert tool.exists(), "comfy-test is missing: run `make setup`"
    r = subprocess.run([str(tool), "lint", str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[SYNTAX] PASSED" in r.stdout and "[JAVASCRIPT] PASSED" in r.stdout


def _requirement_names(path: Path) -> set[str]:
    import re

    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=~!;\[ ]", line, 1)[0].strip().lower().replace("_", "-"))
    return names


def test_requirements_leave_torch_and_xformers_to_the_host():
    """requirements.txt lists only what ComfyUI does not install itself (today: nothing), never torch/xformers."""
    import comfy_harness

    names = _requirement_names(REPO / "requirements.txt")
    assert not {"torch", "xformers", "torchvision", "torchaudio"} & names
    assert not names & _requirement_names(comfy_harness.comfyui_dir() / "requirements.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    assert "torch" in deps and not any(d.startswith(("torch=", "torch>", "torch<", "torch ")) for d in deps)
    assert project["project"]["optional-dependencies"]["cuda"] == ["xformers>=0.0.35"]
    comfy = project["tool"]["comfy"]
    assert comfy["DisplayName"] and comfy["PublisherId"]


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


def test_the_wheel_holds_every_tracked_module_of_the_library(tmp_path):
    """`pip install .` (not editable) ships all of coat_model (data, bench, ...): the wheel, built offline from
    exactly the tracked files, holds every tracked file under coat_model/ and nothing else of the repository;
    installed from it alone, `coat-train` and the subpackages import."""
    import zipfile

    src = tmp_path / "src"
    tracked = _tracked()
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((REPO / rel).read_bytes())
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "-w", str(dist), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheel, = dist.glob("comfyui_coat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    package = sorted(n for n in names if not n.split("/")[0].endswith(".dist-info"))
    assert package == sorted(p for p in tracked if p.startswith("coat_model/"))
    info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    assert any(n.endswith("/LICENSE") for n in info), info
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in info if n.endswith("entry_points.txt"))).decode()
    assert "coat-train = coat_model.train.cli:main" in entry_points

    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    code = ("import coat_model, coat_model.train.data.folder, coat_model.bench, coat_model.train.cli, sys; "
            "assert coat_model.__file__.startswith(sys.argv[1]), coat_model.__file__; "
            "sys.argv = ['coat-train', '--help']; coat_model.train.cli.main()")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "--resolution" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_license_and_registry_metadata():
    """A LICENSE (MIT) next to pyproject, which carries what the Comfy registry requires: a semver version, the
    repository URL, a publisher id and an icon URL (no local path or placeholder)."""
    import re

    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "comfyui-coat contributors" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta, comfy = project["project"], project["tool"]["comfy"]
    assert meta["license"] == {"file": "LICENSE"}
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,98}", meta["name"]) and re.fullmatch(r"\d+\.\d+\.\d+",
                                                                                          meta["version"])
    url = re.compile(r"https://[A-Za-z0-9.-]+\.[a-z]{2,}/[^\s<>{}]*")
    assert url.fullmatch(meta["urls"]["Repository"])
    assert all(url.fullmatch(u) for u in meta["urls"].values())
    assert url.fullmatch(comfy["Icon"]) and comfy["Icon"].endswith(".png")
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]) and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=")
