"""Procedural 3D scenes, their renders with exact ground truth, point and ray queries, and dataset files.

Nothing here imports ``frobnolab.models`` or ``frobnolab.analysis``. pyrender (and so OpenGL) is imported only by
``frobnolab.scenes.render`` and what uses it, after the platform has been chosen (see ``frobnolab.scenes.gl``).
"""

from .family import Family, load_family, shipped_families
from .schema import FamilyError
from .scene import Camera, Light, Material, Scene, SceneObject

__all__ = ["Family", "FamilyError", "load_family", "shipped_families", "Camera", "Light", "Material", "Scene",
           "SceneObject"]
