"""The Blender backend: `backend` (settings checks, command lines for a frame and a chunk,
output rules) and `pack` (`distren pack` of a .blend, inspected by Blender in the sandbox)."""

from .backend import BlenderBackend

__all__ = ["BlenderBackend"]
