"""`distren blender-addon`: the Blender add-on `distren_blender`, written as an installable zip.

The add-on's source is package data of distren (`distren_blender/`): it runs inside Blender's
own Python, where distren is not importable, so it is never imported here, only copied.
"""

from __future__ import annotations

import zipfile
from importlib import resources
from pathlib import Path

from ..files import atomic_file

ADDON_MODULE = "distren_blender"
ADDON_FILES = ("__init__.py", "blender_manifest.toml")
DEFAULT_ZIP = "distren_blender.zip"
# Zip entries carry a date; a fixed one keeps the zip the same bytes for the same add-on.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def addon_source(name: str) -> bytes:
    """One file of the add-on, as shipped with distren."""
    return resources.files(__package__).joinpath(ADDON_MODULE, name).read_bytes()


def write_addon(target: Path) -> Path:
    """Write the add-on zip (folder `distren_blender/` with its files, as Blender's add-on
    installer expects) to `target`, or into it when it is a folder. Deterministic. Returns the
    path written."""
    target = Path(target)
    if target.is_dir():
        target = target / DEFAULT_ZIP
    with atomic_file(target) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ADDON_FILES:
            info = zipfile.ZipInfo(f"{ADDON_MODULE}/{name}", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, addon_source(name))
    return target
