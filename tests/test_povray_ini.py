"""The POV-Ray INI reader, plans and command lines (src/distren/backends/povray/ini.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distren.backends.povray import ini as pi
from distren.errors import BadSettings

EXAMPLES = Path("/usr/share/doc/povray/examples/animations")
needs_povray = pytest.mark.skipif(shutil.which("povray") is None, reason="POV-Ray is not installed")

SCENE = """#version 3.7;
global_settings { assumed_gamma 1.0 }
#ifndef (Shift) #declare Shift = 0; #end
camera { location <0, 2, -5> look_at <0, 0.5, 0> }
light_source { <5, 10, -5> color rgb 1 }
plane { y, 0 pigment { checker rgb 0.2 rgb 0.9 } }
sphere { <2 * cos(clock * 2 * pi) + Shift, 0.7, 2 * sin(clock * 2 * pi)>, 0.7
         pigment { rgb <1, 0.3, 0.2> } finish { specular 0.5 } }
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A job folder with scene.pov and an empty header.inc."""
    (tmp_path / "scene.pov").write_text(SCENE)
    (tmp_path / "header.inc").write_text("// nothing\n")
    return tmp_path


def ini(root: Path, text: str, name: str = "scene.ini") -> pi.IniOptions:
    (root / name).write_text(text)
    return pi.parse_ini(root / name, root)


def refusal(root: Path, text: str) -> str:
    with pytest.raises(BadSettings) as info:
        ini(root, text)
    return info.value.message


# ---------------------------------------------------------------------------------------------
# Syntax


def test_key_value_lines_comments_quotes_and_case(root):
    parsed = ini(root, """; a comment line
# another comment
  width = 160   ; trailing comment
HEIGHT=120# comment
Input_File_Name="scene.pov"
antialias=YES

Antialias_Threshold='0.3'
Initial_Frame=1
Final_Frame=40
""")
    assert parsed.options == {
        "Width": "160", "Height": "120", "Input_File_Name": "scene.pov", "Antialias": "on",
        "Antialias_Threshold": "0.3", "Initial_Frame": "1", "Final_Frame": "40",
    }
    assert parsed.warnings == []
    assert parsed.files == ["scene.ini", "scene.pov"]


def test_crlf_and_last_value_wins(root):
    parsed = ini(root, "Width=100\r\nWidth=200\r\nHeight=50, 60\r\n")
    assert parsed.options["Width"] == "200"
    assert parsed.options["Height"] == "60"  # a comma list: POV-Ray applies each value


def test_switch_lines(root):
    parsed = ini(root, "+W160 +H120 -D +A0.3\n+KFI1 +KFF40 +KI0 +KF1 +KC +UA -UL +UV\n"
                       "+FN16 +MB5 +J0.5 +Q9 +R4 +AM2 +SC0.25 +EC1.0 +SR2 +ER100\n"
                       '+Iscene.pov +HI"header.inc"\n')
    assert parsed.options == {
        "Width": "160", "Height": "120", "Antialias": "on", "Antialias_Threshold": "0.3",
        "Initial_Frame": "1", "Final_Frame": "40", "Initial_Clock": "0.0", "Final_Clock": "1.0",
        "Cyclic_Animation": "on", "Output_Alpha": "on", "Light_Buffer": "off", "Vista_Buffer": "on",
        "Output_File_Type": "N", "Bits_Per_Color": "16", "Bounding": "on", "Bounding_Threshold": "5",
        "Jitter": "on", "Jitter_Amount": "0.5", "Quality": "9", "Antialias_Depth": "4",
        "Sampling_Method": "2", "Start_Column": "0.25", "End_Column": "1.0", "Start_Row": "2",
        "End_Row": "100", "Input_File_Name": "scene.pov", "Include_Header": "header.inc",
    }
    assert len(parsed.warnings) == 1 and "line 1" in parsed.warnings[0] and "Display" in parsed.warnings[0]


@pytest.mark.parametrize("line, expected", [
    ("+A", {"Antialias": "on"}),
    ("-A", {"Antialias": "off"}),
    ("-A0.2", {"Antialias": "off", "Antialias_Threshold": "0.2"}),
    ("+J", {"Jitter": "on"}),
    ("-J", {"Jitter": "off"}),
    ("+KC", {"Cyclic_Animation": "on"}),
    ("-KC", {"Cyclic_Animation": "off"}),
    ("-MB", {"Bounding": "off"}),
    ("+THFS", {"Dither": "on", "Dither_Method": "FS"}),
    ("+FPg", {"Output_File_Type": "P", "Grayscale_Output": "on"}),
    ("+fn", {"Output_File_Type": "N"}),
    ("+STP2", {"Frame_Step": "2"}),
    ("+K0.5", {"Clock": "0.5"}),
    ("+MV3.7", {"Version": "3.7"}),
])
def test_switch_forms(root, line, expected):
    assert ini(root, line + "\n").options == expected


def test_switches_and_an_option_on_one_line(root):
    # As in POV-Ray's own splinefollow.ini sample.
    parsed = ini(root, "+kf0.1666 +kff20 +kc declare=fp=0\n")
    assert parsed.options == {"Final_Clock": "0.1666", "Final_Frame": "20", "Cyclic_Animation": "on"}
    assert parsed.declares == ["fp=0.0"]


def test_text_after_an_option_is_ignored_like_povray_does(root):
    parsed = ini(root, "Width=100 +H50\n")
    assert parsed.options == {"Width": "100"}
    assert any("ignores the text after the Width option" in w for w in parsed.warnings)


def test_sections_are_ignored(root):
    parsed = ini(root, "Width=70\n[Low]\nWidth=20\nPre_Frame_Command=rm -rf /\n[High]\nWidth=9999\n")
    assert parsed.options == {"Width": "70"}


def test_section_header_after_an_option_on_the_same_line_is_no_header(root):
    # POV-Ray reads one option per line, so this [Low] is ignored and Width=20 applies.
    assert ini(root, "Width=70 [Low]\nWidth=20\n").options["Width"] == "20"


def test_declares_kept_in_order(root):
    parsed = ini(root, "Declare=B=2\nDeclare=A=1.5\nDeclare=C=-3e2\n")
    assert parsed.declares == ["B=2.0", "A=1.5", "C=-300.0"]
    assert "Declare" not in parsed.options


def test_subset_is_remembered_not_kept(root):
    parsed = ini(root, "Subset_Start_Frame=5\nSubset_End_Frame=9\n")
    assert parsed.subset == (5, 9)
    assert parsed.options == {}
    assert len(parsed.warnings) == 2
    assert ini(root, "+SF3 +EF4\n").subset == (3, 4)
    fractional = ini(root, "Subset_Start_Frame=0.5\n")
    assert fractional.subset == (None, None) and "fraction" in fractional.warnings[0]


def test_bare_names(root):
    (root / "other.ini").write_text("Height=33\n")
    parsed = ini(root, "scene.pov\nother.ini\n'other.ini'\n")
    assert parsed.options == {"Input_File_Name": "scene.pov", "Height": "33"}
    message = refusal(root, "Width=1\nsome/dir/\n")
    assert "scene.ini line 2" in message and "Library_Path" in message


def test_unquoted_path_with_spaces(root):
    (root / "my scene.pov").write_text(SCENE)
    assert ini(root, "Input_File_Name=my scene.pov ; comment\n").options["Input_File_Name"] == "my scene.pov"
    # POV-Ray ends the value where an option name follows (after skipping one character).
    assert ini(root, "Input_File_Name=scene.pov XWidth=5\n").options["Input_File_Name"] == "scene.pov"


def test_input_file_name_without_extension(root):
    assert ini(root, "Input_File_Name=scene\n").options["Input_File_Name"] == "scene.pov"


def test_aliases(root):
    parsed = ini(root, "Bits_Per_Colour=12\nGreyscale_Output=on\n")
    assert parsed.options == {"Bits_Per_Color": "12", "Grayscale_Output": "on"}


def test_output_file_type_reads_only_the_letter(root):
    parsed = ini(root, "Output_File_Type=N16\n")
    assert parsed.options == {"Output_File_Type": "N"}
    assert "Bits_Per_Color" in parsed.warnings[0]


# ---------------------------------------------------------------------------------------------
# Include_Ini


def test_include_ini_inside_root_is_followed(root):
    (root / "sub").mkdir()
    (root / "sub" / "quality.ini").write_text("Antialias=on\nInclude_Ini=sub/size.ini\n")
    (root / "sub" / "size.ini").write_text("Width=320\n[Big]\nWidth=1600\n")
    parsed = ini(root, "Width=10\nInclude_Ini=sub/quality.ini\nHeight=240\n")
    assert parsed.options == {"Width": "320", "Antialias": "on", "Height": "240"}
    assert parsed.files == ["scene.ini", "sub/quality.ini", "sub/size.ini"]


def test_include_ini_with_a_section(root):
    (root / "res.ini").write_text("Width=1\n[Big]\nWidth=1600\nHeight=1200\n[Small]\nWidth=80\n")
    assert ini(root, "Include_Ini=res.ini[big]\n").options == {"Width": "1600", "Height": "1200"}
    assert ini(root, "Include_Ini=res\n").options == {"Width": "1"}  # .ini is added, as POV-Ray does


@pytest.mark.parametrize("target", ["/etc/povray/3.7/povray.ini", "../outside.ini", "missing.ini",
                                    "sub/../../outside.ini", "C:/x.ini", "a\\b.ini"])
def test_include_ini_outside_or_missing_is_refused(root, target):
    (root.parent / "outside.ini").write_text("Width=5\n")
    message = refusal(root, f"Width=1\nInclude_Ini={target}\n")
    assert "scene.ini line 2" in message and "Include_Ini" in message


def test_include_ini_through_a_symlink_out_of_root_is_refused(root):
    (root.parent / "outside.ini").write_text("Width=5\n")
    (root / "link.ini").symlink_to(root.parent / "outside.ini")
    assert "out of the job folder" in refusal(root, "Include_Ini=link.ini\n")


def test_include_ini_cycle_is_refused(root):
    (root / "a.ini").write_text("Include_Ini=b.ini\n")
    (root / "b.ini").write_text("Width=3\nInclude_Ini=a.ini\n")
    message = refusal(root, "Include_Ini=a.ini\n")
    assert "cycle" in message and "b.ini line 2" in message and "a.ini -> b.ini -> a.ini" in message
    assert "cycle" in refusal(root, "Include_Ini=scene.ini\n")


def test_include_ini_depth_is_capped(root):
    for i in range(pi.MAX_INCLUDE_DEPTH + 1):
        (root / f"d{i}.ini").write_text(f"Include_Ini=d{i + 1}.ini\n")
    (root / f"d{pi.MAX_INCLUDE_DEPTH + 1}.ini").write_text("Width=1\n")
    assert "deeper than" in refusal(root, "Include_Ini=d0.ini\n")


def test_oversized_ini_is_refused(root):
    (root / "big.ini").write_bytes(b";" * (pi.MAX_INI_BYTES + 1))
    assert "larger than" in refusal(root, "Include_Ini=big.ini\n")


# ---------------------------------------------------------------------------------------------
# Refused, dropped and bad values

REFUSED_KEYS = sorted(pi._REFUSED)


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_refused_keys(root, key):
    message = refusal(root, f"; header\nWidth=160\n\n  {key.lower()} = something\n")
    assert message.startswith("scene.ini line 4: ")
    assert key in message and "not" in message


def test_refusal_message_reads_well(root):
    message = refusal(root, "Width=1\n\n\n\n\n\nPre_Frame_Command=touch /tmp/pwned\n")
    assert message == "scene.ini line 7: Pre_Frame_Command runs shell commands and is not allowed"


@pytest.mark.parametrize("switch, key", [
    ("+L/usr/lib/", "Library_Path"),
    ("+O/tmp/x.png", "Output_File_Name"),
    ('+O"/tmp/x y.png"', "Output_File_Name"),
    ("+GIout.ini", "Create_Ini"),
    ("+GAall.log", "All_File"),
    ("+GDdebug.log", "Debug_File"),
    ("+GFfatal.log", "Fatal_File"),
    ("+GRrender.log", "Render_File"),
    ("+GSstats.log", "Statistic_File"),
    ("+GWwarn.log", "Warning_File"),
    ("+RFcache.rad", "Radiosity_File_Name"),
    ("+RFI", "Radiosity_From_File"),
    ("+RFO", "Radiosity_To_File"),
])
def test_refused_switches(root, switch, key):
    message = refusal(root, f"+W160\n+H120 {switch} +A\n")
    assert message.startswith("scene.ini line 2: ") and key in message


def test_refused_key_in_an_included_ini_names_that_file(root):
    (root / "inc.ini").write_text("; x\nDebug_File=debug.txt\n")
    assert refusal(root, "Include_Ini=inc.ini\n").startswith("inc.ini line 2: Debug_File")


DROPPED = [
    ("Display=on", "Display"),
    ("Pause_When_Done=on", "Pause_When_Done"),
    ("Verbose=on", "Verbose"),
    ("Video_Mode=0", "Video_Mode"),
    ("Palette=3", "Palette"),
    ("Draw_Vistas=on", "Draw_Vistas"),
    ("Preview_Start_Size=8", "Preview_Start_Size"),
    ("Preview_End_Size=1", "Preview_End_Size"),
    ("Test_Abort=on", "Test_Abort"),
    ("Test_Abort_Count=100", "Test_Abort_Count"),
    ("Continue_Trace=on", "Continue_Trace"),
    ("Output_to_File=off", "Output_to_File"),
    ("Buffer_Output=on", "Buffer_Output"),
    ("Buffer_Size=100", "Buffer_Size"),
    ("Work_Threads=64", "Work_Threads"),
    ("Debug_Console=on", "Debug_Console"),
    ("All_Console=off", "All_Console"),
    ("Warning_Level=10", "Warning_Level"),
    ("Max_Image_Buffer_Memory=128", "Max_Image_Buffer_Memory"),
    ("Real_Time_Raytracing=on", "Real_Time_Raytracing"),
    ("+D", "Display"),
    ("-D", "Display"),
    ("+P", "Pause_When_Done"),
    ("+V", "Verbose"),
    ("+C", "Continue_Trace"),
    ("+F", "Output_to_File"),
    ("+GA", "All_Console"),
    ("-GW", "Warning_Console"),
    ("+X100", "Test_Abort"),
    ("+WT4", "Work_Threads"),
    ("Fancy_Option=3", "unknown option 'Fancy_Option'"),
    ("+ZZ9", "unknown option '+ZZ9'"),
]


@pytest.mark.parametrize("line, name", DROPPED)
def test_dropped_options_warn(root, line, name):
    parsed = ini(root, f"Width=8\n{line}\n")
    assert parsed.options == {"Width": "8"}
    assert len(parsed.warnings) >= 1
    assert parsed.warnings[0].startswith("scene.ini line 2: ") and name in parsed.warnings[0]


def test_unknown_option_warning_text(root):
    assert ini(root, "Foo=1\n").warnings == ["scene.ini line 1: unknown option 'Foo' dropped"]


@pytest.mark.parametrize("line", [
    "Width=abc",
    "Width=0",
    "Width=16385",
    "Width=1e3",
    "Width=",
    "Height=-5",
    "Quality=12",
    "Antialias=maybe",
    "Antialias_Threshold=-1",
    "Antialias_Threshold=nan",
    "Antialias_Threshold=1e999",
    "Antialias_Depth=10",
    "Sampling_Method=3",
    "Bits_Per_Color=99",
    "Frame_Step=0",
    "Initial_Frame=99999999999",
    "Initial_Clock=0x10",
    "Output_File_Type=S",
    "Output_File_Type=X",
    "Dither_Method=ZZ",
    "File_Gamma=bt709",
    "File_Gamma=0",
    "Start_Column=1.5",
    "Render_Pattern=6",
    "Declare=X",
    "Declare=1X=2",
    "Declare=X=abc",
    'Declare=X="string"',
    'Declare="X=1 +O/tmp/x"',
    "Input_File_Name=../x.pov",
    "Input_File_Name=/etc/passwd",
    "Input_File_Name=missing.pov",
    "Input_File_Name=_distren/out/scene.pov",
    "Include_Header=/etc/passwd",
    "+Wabc",
    "+FS",
    "+FN16x",
])
def test_bad_values_are_refused(root, line):
    message = refusal(root, f"; first\n{line}\n")
    assert message.startswith("scene.ini line 2: ")


def test_injection_after_a_value_never_reaches_povray(root):
    parsed = ini(root, "Declare=X=1 +O/tmp/x\nWidth=160; rm -rf /\nHeight=120 Pre_Frame_Command=x\n")
    assert parsed.declares == ["X=1.0"]
    assert parsed.options == {"Width": "160", "Height": "120"}
    povplan = pi.plan({"ini": "scene.ini", "scene": "scene.pov"}, root)
    args = " ".join(pi.frame_args(povplan, 0, "/out/scene"))
    assert "/tmp/x" not in args and "rm" not in args and "Pre_Frame" not in args


# ---------------------------------------------------------------------------------------------
# Plans


def test_plan_from_settings_only(root):
    povplan = pi.plan({"scene": "scene.pov"}, root)
    assert povplan.scene == "scene.pov"
    assert povplan.options == pi.DEFAULT_OPTIONS
    assert (povplan.initial_frame, povplan.final_frame, povplan.animated) == (1, 1, False)


def test_plan_scene_from_ini_and_overrides(root):
    (root / "scene.ini").write_text("Input_File_Name=scene.pov\nWidth=160\nHeight=120\nAntialias=off\n"
                                    "Initial_Frame=1\nFinal_Frame=40\nDeclare=Shift=1\n")
    povplan = pi.plan({"ini": "scene.ini", "width": "320", "height": "240", "antialias": "0.2",
                       "initial-frame": "5", "final-frame": "9", "initial-clock": "0.5",
                       "final-clock": "2"}, root)
    assert povplan.scene == "scene.pov"
    assert "Input_File_Name" not in povplan.options
    assert povplan.options["Width"] == "320" and povplan.options["Height"] == "240"
    assert povplan.options["Antialias"] == "on" and povplan.options["Antialias_Threshold"] == "0.2"
    assert povplan.options["Initial_Clock"] == "0.5" and povplan.options["Final_Clock"] == "2.0"
    assert (povplan.initial_frame, povplan.final_frame, povplan.animated) == (5, 9, True)
    assert povplan.declares == ["Shift=1.0"]
    assert pi.plan({"ini": "scene.ini", "antialias": "off"}, root).options["Antialias"] == "off"


def test_plan_scene_setting_beats_the_ini(root):
    (root / "other.pov").write_text(SCENE)
    (root / "scene.ini").write_text("Input_File_Name=scene.pov\n")
    assert pi.plan({"ini": "scene.ini", "scene": "other.pov"}, root).scene == "other.pov"


@pytest.mark.parametrize("settings, fragment", [
    ({"scene": "scene.pov", "quality": "9"}, "<quality>"),
    ({"width": "10"}, "no scene"),
    ({"scene": "../scene.pov"}, "<scene>"),
    ({"scene": "/etc/passwd"}, "<scene>"),
    ({"scene": "nope.pov"}, "<scene>"),
    ({"scene": "scene.pov", "ini": "nope.ini"}, "<ini>"),
    ({"scene": "scene.pov", "width": "wide"}, "<width>"),
    ({"scene": "scene.pov", "height": "0"}, "<height>"),
    ({"scene": "scene.pov", "antialias": "lots"}, "<antialias>"),
    ({"scene": "scene.pov", "antialias": "-0.1"}, "<antialias>"),
    ({"scene": "scene.pov", "initial-frame": "-1"}, "<initial-frame>"),
    ({"scene": "scene.pov", "final-clock": "inf"}, "<final-clock>"),
])
def test_plan_refusals(root, settings, fragment):
    with pytest.raises(BadSettings) as info:
        pi.plan(settings, root)
    assert fragment in info.value.message


def test_plan_refuses_a_povray_ini_in_the_job_folder(root):
    (root / "POVRay.ini").write_text("Width=5\n")
    with pytest.raises(BadSettings, match="own configuration"):
        pi.plan({"scene": "scene.pov"}, root)
    assert pi.plan({"scene": "scene.pov"}, root, check_folder=False).scene == "scene.pov"


@pytest.mark.parametrize("initial, final, animated, frames", [
    (None, None, False, (1, 1)),
    ("0", "0", False, (0, 0)),
    ("1", "1", False, (1, 1)),
    ("1", None, True, (1, 1)),
    (None, "3", True, (1, 3)),
    ("2", "4", True, (2, 4)),
    ("0", "1000", True, (0, 1000)),
    ("-3", "3", True, (0, 3)),
    ("5", "2", True, (5, 5)),
])
def test_animation_rule_follows_povray(root, initial, final, animated, frames):
    lines = [f"Initial_Frame={initial}" if initial else "", f"Final_Frame={final}" if final else ""]
    (root / "scene.ini").write_text("\n".join(lines) + "\n")
    povplan = pi.plan({"scene": "scene.pov", "ini": "scene.ini"}, root)
    assert povplan.animated is animated
    assert (povplan.initial_frame, povplan.final_frame) == frames


def test_equal_frames_warn_about_the_clock(root):
    (root / "scene.ini").write_text("Initial_Frame=3\nFinal_Frame=3\n")
    assert any("not a number" in w for w in pi.plan({"scene": "scene.pov", "ini": "scene.ini"}, root).warnings)


def test_check_frames(root):
    (root / "scene.ini").write_text("Initial_Frame=1\nFinal_Frame=40\n")
    animation = pi.plan({"scene": "scene.pov", "ini": "scene.ini"}, root)
    pi.check_frames(animation, [1, 20, 40])
    with pytest.raises(BadSettings, match="frame 41 is outside the animation's frames 1-40"):
        pi.check_frames(animation, [1, 41, 0])
    with pytest.raises(BadSettings, match="frame 0 "):
        pi.check_frames(animation, [0])
    still = pi.plan({"scene": "scene.pov"}, root)
    pi.check_frames(still, [0])
    pi.check_frames(still, [7])
    with pytest.raises(BadSettings, match="frame 5: the scene is a still"):
        pi.check_frames(still, [0, 5])
    with pytest.raises(BadSettings, match="no frames"):
        pi.check_frames(still, [])


# ---------------------------------------------------------------------------------------------
# Command lines


def test_frame_args(root):
    (root / "scene.ini").write_text("Input_File_Name=scene.pov\nWidth=80\nHeight=60\n+A0.3\n"
                                    "Initial_Frame=1\nFinal_Frame=12\nDeclare=Shift=1\n+HIheader.inc\n")
    povplan = pi.plan({"ini": "scene.ini"}, root)
    args = pi.frame_args(povplan, 3, "/job/_distren/out/scene", threads=2)
    assert args == [
        "Output_File_Type=N", "Width=80", "Height=60", "Antialias=on", "Antialias_Threshold=0.3",
        "Initial_Frame=1", "Final_Frame=12", "Include_Header=header.inc", "Declare=Shift=1.0",
        "Input_File_Name=scene.pov", "Output_to_File=on", "Output_File_Name=/job/_distren/out/scene",
        "Display=off", "Pause_When_Done=off", "Subset_Start_Frame=3", "Subset_End_Frame=3",
        "Work_Threads=2",
    ]
    assert pi.output_file(povplan, 3, "/out/scene") == "/out/scene03.png"
    with pytest.raises(BadSettings, match="frame 13 is outside"):
        pi.frame_args(povplan, 13, "/out/scene")


def test_frame_args_for_a_still(root):
    povplan = pi.plan({"scene": "scene.pov", "width": "20", "height": "10"}, root)
    args = pi.frame_args(povplan, 0, "/out/scene")
    assert not any(a.startswith("Subset_") or a.startswith("Work_Threads") for a in args)
    assert pi.output_file(povplan, 0, "/out/scene") == "/out/scene.png"


def test_frame_digits_count_the_cyclic_extra_frame(root):
    (root / "scene.ini").write_text("Initial_Frame=0\nFinal_Frame=9\nCyclic_Animation=on\nOutput_File_Type=T\n")
    povplan = pi.plan({"scene": "scene.pov", "ini": "scene.ini"}, root)
    assert povplan.frame_digits == 2
    assert pi.output_file(povplan, 4, "/o/x") == "/o/x04.tga"


def test_paths_with_spaces_are_quoted(root):
    (root / "my scene.pov").write_text(SCENE)
    povplan = pi.plan({"scene": "my scene.pov"}, root)
    args = pi.frame_args(povplan, 0, "/out dir/x")
    assert 'Input_File_Name="my scene.pov"' in args and 'Output_File_Name="/out dir/x"' in args
    with pytest.raises(BadSettings):
        pi.frame_args(povplan, 0, '/out/"x')
    with pytest.raises(BadSettings):
        pi.frame_args(povplan, 0, "/out/x\n+O/tmp/y")


@pytest.mark.parametrize("options, declares, scene", [
    ({"Output_File_Name": "/tmp/x"}, [], "scene.pov"),
    ({"Pre_Frame_Command": "rm -rf /"}, [], "scene.pov"),
    ({"Width": "160 +O/tmp/x"}, [], "scene.pov"),
    ({"Width": "0160"}, [], "scene.pov"),
    ({"Antialias": "yes"}, [], "scene.pov"),
    ({"Include_Header": "/etc/passwd"}, [], "scene.pov"),
    ({}, ["X=1 +O/tmp/x"], "scene.pov"),
    ({}, [], "../scene.pov"),
    ({}, [], 'a".pov'),
])
def test_frame_args_rechecks_a_tampered_plan(options, declares, scene):
    povplan = pi.PovrayPlan(scene, options, declares, [], 1, 1, False)
    with pytest.raises(BadSettings):
        pi.frame_args(povplan, 0, "/out/x")


def test_frame_args_threads_must_be_sane(root):
    povplan = pi.plan({"scene": "scene.pov"}, root)
    for bad in (0, -1, True, 1.5, 10_000):
        with pytest.raises(BadSettings):
            pi.frame_args(povplan, 0, "/out/x", threads=bad)


# Every argument frame_args emits has one of these forms.
SAFE_ARG = re.compile(r'[A-Z][A-Za-z_]*=(?:[A-Za-z0-9_.+\-=/]+|"[^"\x00-\x1f]*")')

# Lines that POV-Ray accepts (mostly), then hostile and broken text around them.
_good_lines = st.sampled_from([
    "Width=160", "height = 120", "Antialias=on", "Antialias_Threshold=0.3", "Declare=Shift=0.5",
    "Declare=A_1=-2", "Input_File_Name=scene.pov", 'Input_File_Name="scene.pov"', "Include_Header=header.inc",
    "Initial_Frame=1", "Final_Frame=40", "Initial_Clock=0", "Cyclic_Animation=yes", "Dither_Method=fs",
    "File_Gamma=sRGB", "Start_Column=0.25", "Output_File_Type=N16", "Quality=9", "Version=3.7",
    "Subset_Start_Frame=3", "Display=on", "Verbose=off", "Unknown_Key=1", "+W160 +H120 -D +A0.3",
    "+KFI1 +KFF40 +KC", "+FN16 +UA", "+Iscene.pov +HIheader.inc", "+SF2 +EF5", "scene.pov", "; comment",
])
_hostile = st.sampled_from([
    "X=1 +O/tmp/x", '"X=1 +O/tmp/x"', "/tmp/x", "../x", "$(id)", "`id`", "a b", "", "\\x", "\x00",
    "\u00e9", "1;2", "1#2", "1,2", "[Sec]", " ", "\t", ",", ";", "#", "[", "]", '"', "'", "=", "+",
    "-", "\r", "+O", "+L", "+GA", "+I", "Library_Path", "Output_File_Name", "Include_Ini", "0", "on",
])
_line = st.one_of(
    _good_lines,
    _good_lines,
    st.tuples(_good_lines, _hostile).map("".join),
    st.tuples(_good_lines, st.sampled_from([" ", "\t"]), _hostile).map("".join),
    st.lists(st.one_of(_hostile, _good_lines), max_size=5).map("".join),
)
_ini_text = st.lists(_line, max_size=6).map("\n".join)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "scene.pov").write_text(SCENE)
    (folder / "header.inc").write_text("// nothing\n")
    return folder


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_ini_text)
def test_frame_args_only_ever_hold_checked_values(fuzz_root, text):
    (fuzz_root / "fuzz.ini").write_text(text)
    try:
        povplan = pi.plan({"scene": "scene.pov", "ini": "fuzz.ini"}, fuzz_root)
        args = pi.frame_args(povplan, povplan.initial_frame, "/job/_distren/out/scene")
    except BadSettings:
        return
    for arg in args:
        assert SAFE_ARG.fullmatch(arg), arg
        key, _, value = arg.partition("=")
        assert key in pi._KEPT or key in ("Input_File_Name", "Include_Header", "Declare", "Output_to_File",
                                          "Output_File_Name", "Display", "Pause_When_Done",
                                          "Subset_Start_Frame", "Subset_End_Frame")
        if key in ("Input_File_Name", "Include_Header"):
            assert value.strip('"') in ("scene.pov", "header.inc")
        if key == "Output_File_Name":
            assert value == "/job/_distren/out/scene"


# ---------------------------------------------------------------------------------------------
# With POV-Ray itself

ANIMATION_INI = """; a small animation for the pixel test
Input_File_Name=scene.pov
Initial_Frame=1
Final_Frame=12
Initial_Clock=0
Final_Clock=1
Width=80
Height=60
Antialias=on
+A0.1 +R3 -J
Cyclic_Animation=on
Declare=Shift=0.5
Display=on
Verbose=off
"""


def _pixels(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size, im.mode, im.tobytes()


@needs_povray
def test_frame_args_render_the_same_pixels_as_povray_itself(root, tmp_path):
    (root / "scene.ini").write_text(ANIMATION_INI)
    povplan = pi.plan({"ini": "scene.ini"}, root)
    out = tmp_path / "out"
    out.mkdir()
    rendered = []
    for frame in (2, 7):
        args = pi.frame_args(povplan, frame, f"{out}/distren", threads=1)
        subprocess.run(["povray", *args], cwd=root, check=True, capture_output=True, timeout=60)
        subprocess.run(["povray", "scene.ini", f"+SF{frame}", f"+EF{frame}", "-D", f"+O{out}/direct"],
                       cwd=root, check=True, capture_output=True, timeout=60)
        mine = Path(pi.output_file(povplan, frame, f"{out}/distren"))
        theirs = out / f"direct{frame:02d}.png"
        assert mine.is_file() and theirs.is_file()
        assert _pixels(mine) == _pixels(theirs)
        assert _pixels(mine)[0] == (80, 60)
        rendered.append(_pixels(mine))
    assert rendered[0] != rendered[1]  # the clock moved the sphere


@needs_povray
def test_povray_accepts_every_kept_option_as_an_argument(root, tmp_path):
    values = {
        "Width": "16", "Height": "12", "Start_Column": "0.0", "End_Column": "16", "Start_Row": "1",
        "End_Row": "1.0", "Initial_Frame": "1", "Final_Frame": "3", "Initial_Clock": "0", "Final_Clock": "1",
        "Clock": "0.5", "Frame_Step": "1", "Cyclic_Animation": "on", "Clockless_Animation": "off",
        "Field_Render": "off", "Odd_Field": "off", "Quality": "9", "Antialias": "on",
        "Sampling_Method": "2", "Antialias_Threshold": "0.2", "Antialias_Depth": "3",
        "Antialias_Gamma": "2.5", "Jitter": "off", "Jitter_Amount": "0.5", "Output_File_Type": "N",
        "Output_Alpha": "off", "Grayscale_Output": "off", "Bits_Per_Color": "8", "Compression": "50",
        "Dither": "off", "Dither_Method": "FS", "File_Gamma": "sRGB", "Display_Gamma": "2.2",
        "Bounding": "on", "Bounding_Threshold": "3", "Bounding_Method": "1", "Light_Buffer": "on",
        "Vista_Buffer": "on", "Remove_Bounds": "on", "Split_Unions": "off",
        "High_Reproducibility": "off", "Radiosity_Vain_Pretrace": "on", "Version": "3.7",
        "Render_Block_Size": "16", "Render_Pattern": "0", "Render_Block_Step": "0",
    }
    assert set(values) == set(pi._KEPT)
    text = "".join(f"{k}={v}\n" for k, v in values.items()) + "Include_Header=header.inc\nDeclare=Shift=1\n"
    (root / "scene.ini").write_text(text)
    povplan = pi.plan({"scene": "scene.pov", "ini": "scene.ini"}, root)
    assert povplan.warnings == []
    args = pi.frame_args(povplan, 2, f"{tmp_path}/all", threads=1)
    proc = subprocess.run(["povray", *args], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Problem with option" not in proc.stderr
    assert Path(pi.output_file(povplan, 2, f"{tmp_path}/all")).is_file()


# ---------------------------------------------------------------------------------------------
# POV-Ray's own sample animations (Debian's povray-examples: `scripts/setup.sh --test` installs it)

# Samples that POV-Ray itself cannot render as shipped, and the file they name wrongly.
BROKEN_SAMPLES = {"reflection.ini": "reflect.pov"}
SAMPLE_INIS = sorted(EXAMPLES.glob("*/*.ini")) if EXAMPLES.is_dir() else []


# (one case None when they are missing: it fails, instead of pytest skipping an empty list)
@pytest.mark.parametrize("path", SAMPLE_INIS or [None], ids=lambda p: p.name if p else "missing")
def test_povray_sample_animations_plan(path):
    assert path is not None, f"no POV-Ray sample animations in {EXAMPLES}: install povray-examples " \
        "(scripts/setup.sh --test does)"
    if path.name in BROKEN_SAMPLES:
        with pytest.raises(BadSettings, match=BROKEN_SAMPLES[path.name]):
            pi.plan({"ini": path.name}, path.parent)
        return
    povplan = pi.plan({"ini": path.name}, path.parent)
    assert povplan.animated
    pi.check_frames(povplan, range(povplan.initial_frame, povplan.final_frame + 1))
    pi.frame_args(povplan, povplan.final_frame, "/job/_distren/out/x")


def test_include_fan_out_is_capped(tmp_path):
    """No cycle, but each INI includes the next many times: the reads are capped."""
    from distren.backends.povray import ini as povray_ini

    (tmp_path / "scene.pov").write_text("sphere { 0, 1 }\n")
    for level in range(6):
        body = "".join(f"Include_Ini=l{level + 1}.ini\n" for _ in range(50)) if level < 5 else "Width=10\n"
        (tmp_path / f"l{level}.ini").write_text(body)
    with pytest.raises(BadSettings, match="more than 64 INI files"):
        povray_ini.parse_ini(tmp_path / "l0.ini", tmp_path)
