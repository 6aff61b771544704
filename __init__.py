"""ComfyUI entry point of the InfiniteTalk streaming dubbing pack.

ComfyUI imports this file as a package under a name derived from the folder, so everything inside the
pack uses relative imports (our ``nodes/`` package would otherwise collide with ComfyUI's ``nodes.py``).
Importing it needs neither ComfyUI nor any model file.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
