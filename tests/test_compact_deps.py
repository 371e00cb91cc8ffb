"""<depends-all/> and <depends-range>: compact dependencies in distrenjob.xml."""

from __future__ import annotations

import pytest

from distren.errors import BadJob, BadJobXML
from distren.job.spec import MAX_DEPENDENCIES, FrameSpec, JobSpec, draft_dep, parse_job_xml


def xml(frames: str) -> bytes:
    return (f'<distrenjob><name>j</name><backend name="povray"/><frames>{frames}</frames></distrenjob>').encode()


def deps_of(spec, frame: int) -> list[int]:
    return sorted(d.frame for f in spec.frames if f.id == frame for d in f.depends)


def test_depends_all_is_every_other_frame_of_the_job():
    spec = parse_job_xml(xml('<range first="0" last="4"/><frame id="9"/><frame id="20"><depends-all/></frame>'),
                         "me", 7)
    assert deps_of(spec, 20) == [0, 1, 2, 3, 4, 9]
    assert all(d.server == "me" and d.job == 7 for f in spec.frames for d in f.depends)


def test_depends_range_takes_the_frames_of_the_job_in_it_and_mixes_with_depends():
    spec = parse_job_xml(xml('<range first="0" last="9"/><frame id="50"/>'
                             '<frame id="30"><depends-range first="2" last="5"/><depends>50</depends>'
                             '<depends>distren://other/3/1</depends></frame>'), "me", 7)
    assert deps_of(spec, 30) == [1, 2, 3, 4, 5, 50]
    assert "distren://other/3/1" in {str(d) for f in spec.frames if f.id == 30 for d in f.depends}


def test_compact_forms_make_cycles_and_caps_as_the_long_form_would():
    with pytest.raises(BadJob, match="cycle"):
        parse_job_xml(xml('<frame id="0"><depends-all/></frame><frame id="1"><depends>0</depends></frame>'), "me", 1)
    with pytest.raises(BadJob, match="empty"):
        parse_job_xml(xml('<frame id="0"/><frame id="1"><depends-range first="5" last="2"/></frame>'), "me", 1)
    # every frame of a big range depending on every other one is refused before it is made
    n = MAX_DEPENDENCIES
    with pytest.raises(BadJob, match="dependencies in all"):
        parse_job_xml(xml(f'<range first="0" last="{n}"><depends-all/></range>'), "me", 1, max_frames=n + 1)
    with pytest.raises(BadJobXML):
        parse_job_xml(xml('<frame id="0"><depends-all>3</depends-all></frame>'), "me", 1)


def test_to_xml_writes_the_compact_form_and_reads_back_the_same_job():
    frames = [FrameSpec(i) for i in range(100_000)]
    frames.append(FrameSpec(100_000, [draft_dep(i) for i in range(100_000)], "ffmpeg"))
    frames.append(FrameSpec(200_000, [draft_dep(i) for i in (0, 1, 2, 3, 7, 9)]))
    spec = JobSpec("v", "povray", {}, frames, extra_backends={"ffmpeg": {}})
    data = spec.to_xml()
    # frame 100000 waits for 0-99999, not for 200000: a range, not all
    assert len(data) < 1000 and b'<depends-range first="0" last="99999"/>' in data
    assert b'<depends-range first="0" last="3"/>' in data
    back = parse_job_xml(data, "local", 0, max_frames=200_000)
    assert [(f.id, sorted(d.frame for d in f.depends), f.backend) for f in back.frames] == \
        [(f.id, sorted(d.frame for d in f.depends), f.backend) for f in frames]


def test_pack_video_uses_depends_all():
    from distren.backends.ffmpeg import add_video

    spec = JobSpec("v", "povray", {}, [FrameSpec(i) for i in range(1, 100_001)])
    add_video(spec)
    assert b"<depends-all/>" in spec.to_xml() and len(spec.to_xml()) < 1000
