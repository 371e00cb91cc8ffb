"""The POV-Ray 3.7 backend: `backend` (settings checks, command lines for a frame and a chunk,
output rules, the radiosity pre-pass), `ini` (the INI reader that keeps only known-safe,
type-checked options) and `pack` (scene scanning and packing for `distren pack`)."""

from .backend import PovrayBackend

__all__ = ["PovrayBackend"]
