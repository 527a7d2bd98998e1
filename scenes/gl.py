"""pyrender, imported the one safe way: platform chosen first, two of its traps mended.

- PYOPENGL_PLATFORM must be set before anything imports OpenGL: EGL where an NVIDIA device is present, else OSMesa.
- Under OSMesa with PyOpenGL >= 3.1.7, ``OpenGL.contextdata.getContext()`` returns a new ctypes object on every call,
  so pyrender's shader-program cache, keyed on it, never hits: it recompiles its shaders every frame and leaks
  (about 4.7 GB after 300 frames at 64x64). We key the cache on the context's integer address instead.
- pyrender renders into a 4x multisampled framebuffer and resolves colour with a linear blit, which blends
  segmentation colours at silhouettes. Ground truth needs one sample per pixel centre, so the multisampled
  buffers are allocated with 0 samples (a plain buffer; the blit becomes a copy).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def _default_platform() -> str:
    return "egl" if Path("/dev/nvidia0").exists() else "osmesa"


os.environ.setdefault("PYOPENGL_PLATFORM", _default_platform())

import OpenGL.contextdata  # noqa: E402
import OpenGL.GL as GL  # noqa: E402
import pyrender  # noqa: E402
import pyrender.renderer  # noqa: E402
import pyrender.shader_program as _sp  # noqa: E402


def _context_key():
    ctx = OpenGL.contextdata.getContext()
    try:
        return ctypes.cast(ctx, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return ctx if isinstance(ctx, int) else id(ctx)


def _get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
    # pyrender.shader_program.ShaderProgramCache.get_program, with the context normalised to an integer key.
    defines = defines or {}
    names = [os.path.basename(f) for f in (vertex_shader, fragment_shader, geometry_shader) if f is not None]
    key = tuple([_context_key()] + sorted([(s, 1) for s in names] + [(d, defines[d]) for d in defines]))
    if key not in self._program_cache:
        files = [os.path.join(self.shader_dir, f) for f in (vertex_shader, fragment_shader) if f is not None]
        files.append(os.path.join(self.shader_dir, geometry_shader) if geometry_shader else None)
        self._program_cache[key] = _sp.ShaderProgram(
            vertex_shader=files[0], fragment_shader=files[1], geometry_shader=files[2], defines=defines)
    return self._program_cache[key]


def _single_sample_storage(target, samples, internalformat, width, height):
    return GL.glRenderbufferStorageMultisample(target, 0, internalformat, width, height)


_sp.ShaderProgramCache.get_program = _get_program
pyrender.renderer.glRenderbufferStorageMultisample = _single_sample_storage

__all__ = ["pyrender"]
