"""ComfyUI entry point of comfyui-coat: COAT (Correspondence-driven Object Appearance Transfer) nodes.

ComfyUI imports this file from ``custom_nodes/`` and then awaits :func:`comfy_entrypoint` (the V3 extension API).
Importing it does nothing else, so tools that import the repository as a package (pytest) need no ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Register the ``coat`` model folder and the match route, put the templates' sample images into the input
    folder (never overwriting); return the extension with the COAT nodes."""
    from .nodes import COATExtension, example_images, paths, routes

    paths.register()
    routes.register()  # GET /coat/matches/{id} for the match panel (web/coat_panel.js)
    example_images.install()  # coat_example_*.png for the templates in example_workflows/
    return COATExtension()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
