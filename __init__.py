"""ComfyUI entry point of comfyui-coat: COAT (Correspondence-driven Object Appearance Transfer) nodes.

ComfyUI imports this file from ``custom_nodes/`` and then awaits :func:`comfy_entrypoint` (the V3 extension API).
Importing it does nothing else, so tools that import the repository as a package (pytest) need no ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Register the ``coat`` model folder and return the extension with the COAT nodes."""
    from .nodes import COATExtension, paths

    paths.register()
    return COATExtension()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
