"""The sample images of the templates (``example_workflows/``), put into ComfyUI's input folder at load.

The templates' Load Image nodes name ``coat_example_content.png`` and ``coat_example_style.png``, so a template opened
from ComfyUI's Templates browser runs without the user copying anything. The names carry the pack's prefix so they
cannot clobber a user's own files, and an existing file is never replaced (a user may have put their own picture
under that name on purpose): each copy is written to a temporary file and linked into place only if the name is
still free.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
# input-folder name -> the pack's file
IMAGES = {"coat_example_content.png": SAMPLES / "content.png", "coat_example_style.png": SAMPLES / "style.png"}

log = logging.getLogger("comfyui-coat")


def copy_new(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` unless ``target`` exists (never overwrites, even in a race); True if copied."""
    if os.path.lexists(target):
        return False
    data = source.read_bytes()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, target)          # fails if the name was taken meanwhile; a hard link is never partial
        except FileExistsError:
            return False
        except OSError:                   # a filesystem without hard links: exclusive create instead
            try:
                with open(target, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
        return True
    finally:
        os.unlink(tmp)


def install(input_dir: str | os.PathLike | None = None) -> list[Path]:
    """Put the sample images into ``input_dir`` (ComfyUI's input folder by default); returns the files written.

    Never raises for a read-only or missing input folder: the pack still loads, and the log says what to copy.
    """
    if input_dir is None:
        import folder_paths

        input_dir = folder_paths.get_input_directory()
    folder = Path(input_dir)
    written = []
    for name, source in IMAGES.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if copy_new(source, folder / name):
                written.append(folder / name)
        except OSError as e:
            log.warning("comfyui-coat: could not copy the template image %s to %s (%s); copy it there by hand "
                        "to run the COAT templates", source, folder / name, e)
    return written
