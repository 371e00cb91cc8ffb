"""Builds the hostile job packages of tests/corpus/cases.json.

Nothing binary is committed: every package is generated here, deterministically (mtime 0,
gzip headers without time or name), into a folder the caller chooses:

    python tests/corpus/make_corpus.py OUT_DIR

`build(out_dir)` writes one file per case of kind "package" or "xml" (named by the case's
"input" for packages, "<id>.tar.gz" for XML cases) and returns {case id: path}.

XML cases hold their distrenjob.xml inline in the manifest ("xml"), or name a generator here
("xml_generator"); they are wrapped into an otherwise good package (the scene below).
Escape targets of hostile members all lie under /tmp/distren-corpus-*: the test checks that
none of them ever exists.
"""

from __future__ import annotations

import gzip
import bz2
import io
import json
import lzma
import struct
import sys
import tarfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "cases.json"
ESCAPE = "/tmp/distren-corpus-escape"

SCENE_POV = """#version 3.7;
global_settings { assumed_gamma 1.0 }
camera { location <0, 2, -5> look_at <0, 0, 0> }
light_source { <2, 4, -3> color rgb 1 }
sphere { <sin(clock * 2 * pi), 0, 0>, 1 pigment { color rgb <clock, 0.5, 1 - clock> } }
"""
SCENE_INI = """; corpus scene
Input_File_Name=scene.pov
Initial_Frame=0
Final_Frame=9
Initial_Clock=0
Final_Clock=1
Width=32
Height=24
"""
GOOD_XML = """<?xml version="1.0"?>
<distrenjob version="1">
  <name>corpus</name>
  <backend name="povray"><ini>scene.ini</ini></backend>
  <frames><range first="0" last="3"/></frames>
</distrenjob>
"""


# ---------------------------------------------------------------------------
# tar building blocks


def tar_bytes(members, compress: str = "gz", fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tarball of (TarInfo, data or None) members; compress "", "gz", "bz2" or "xz"."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as t:
        for info, data in members:
            info.mtime = 0
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return compressed(raw.getvalue(), compress)


def compressed(data: bytes, compress: str) -> bytes:
    if compress == "gz":
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as g:
            g.write(data)
        return out.getvalue()
    if compress == "bz2":
        return bz2.compress(data)
    if compress == "xz":
        return lzma.compress(data)
    return data


def reg(name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def special(name: str, kind: bytes, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info, None


def scene_members(xml: str | bytes = GOOD_XML, ini: str = SCENE_INI, skip=()) -> list:
    members = [reg("distrenjob.xml", xml.encode() if isinstance(xml, str) else xml)]
    for name, text in (("scene.ini", ini), ("scene.pov", SCENE_POV)):
        if name not in skip:
            members.append(reg(name, text.encode()))
    return members


def good(extra=(), **kw) -> bytes:
    """The good package plus hostile extra members."""
    return tar_bytes(scene_members(**kw) + list(extra))


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def raw_header(name: bytes, typeflag: bytes, size_field: bytes) -> bytes:
    """One hand-made ustar header block (for fields tarfile refuses to write)."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    _checksum(block)
    return bytes(block)


def plain_tar_of(members) -> bytes:
    return tar_bytes(members, "")


def pax_header_block(records: bytes, name: bytes = b"././@PaxHeader", declared: int | None = None) -> bytes:
    """A pax extended header ('x') with the given record bytes (not validated)."""
    size = len(records) if declared is None else declared
    head = raw_header(name, b"x", b"%011o\0" % size)
    pad = (-len(records)) % 512
    return head + records + b"\0" * pad


def with_raw_prefix(prefix: bytes, members=None, compress: str = "gz") -> bytes:
    """Hand-made blocks followed by a tarball of the good scene (its end blocks included)."""
    body = plain_tar_of(members if members is not None else scene_members())
    return compressed(prefix + body, compress)


# ---------------------------------------------------------------------------
# the generators, one per package case


def cve_2025_4517(comp_len: int) -> bytes:
    """The shape of the CVE-2025-4517 proof of concept: a chain of directories and symlinks
    whose resolved path outgrows PATH_MAX, a link that climbs out through it, then a file
    written through the link. tarfile's data filter on 3.11.7 lets this escape."""
    comp = "d" * comp_len
    steps = "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append(special(path + comp, tarfile.DIRTYPE))
        members.append(special(path + step, tarfile.SYMTYPE, comp))
        path = path + comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    members.append(special(linkpath, tarfile.SYMTYPE, "../" * len(steps)))
    members.append(special("escape", tarfile.SYMTYPE, linkpath + "/.." * 64 + ESCAPE + "-cve"))
    members.append(special("flaglink", tarfile.LNKTYPE, "escape/pwned"))
    members.append(reg("escape/pwned", b"escaped"))
    return good(members)


def symlink_then_write() -> bytes:
    return good([special("out", tarfile.SYMTYPE, "/tmp"), reg("out/distren-corpus-escape", b"x")])


def negative_size() -> bytes:
    # base-256 size field: 0xff... is -1
    return with_raw_prefix(raw_header(b"neg.bin", b"0", b"\xff" * 12))


def pax_negative_size() -> bytes:
    return with_raw_prefix(pax_header_block(b"13 size=-100\n") + raw_header(b"paxneg.bin", b"0", b"%011o\0" % 0))


def pax_huge_length() -> bytes:
    return with_raw_prefix(pax_header_block(b"999999999999 path=x\n") + raw_header(b"paxlen.bin", b"0", b"%011o\0" % 0))


def pax_digit_run() -> bytes:
    rec = b"path=" + b"9" * 5000
    line = b"%d %s\n" % (len(rec) + 6, rec)
    return with_raw_prefix(pax_header_block(line) + raw_header(b"paxdig.bin", b"0", b"%011o\0" % 0))


def pax_oversize() -> bytes:
    # 2 MiB of pax records (compresses to a few kB): over the 1 MiB cap for one member
    value = b"a" * (2 * 1024 * 1024)
    rec = b"comment=" + value
    n = len(rec) + 2
    n += len(str(n + len(str(n))))
    line = b"%d %s\n" % (n, rec)
    assert len(line) == n, (len(line), n)
    return with_raw_prefix(pax_header_block(line) + raw_header(b"paxbig.bin", b"0", b"%011o\0" % 0))


def pax_declared_huge() -> bytes:
    """A pax header that declares 8 GiB of records and then ends."""
    return compressed(raw_header(b"././@PaxHeader", b"x", b"%011o\0" % (8 * 1024**3)) + b"\0" * 1024, "gz")


def gnu_longname_huge() -> bytes:
    name = b"n" * (1536 * 1024) + b"\0"
    head = raw_header(b"././@LongLink", b"L", b"%011o\0" % len(name))
    return with_raw_prefix(head + name + b"\0" * ((-len(name)) % 512) + raw_header(b"short", b"0", b"%011o\0" % 0))


def pax_nul_path() -> bytes:
    rec = b"path=evil\0name"
    line = b"%d %s\n" % (len(rec) + 4, rec)
    assert len(line) == len(rec) + 4
    return with_raw_prefix(pax_header_block(line) + raw_header(b"nulpath", b"0", b"%011o\0" % 0))


def pax_path_absolute() -> bytes:
    rec = ("path=" + ESCAPE + "-pax").encode()
    line = b"%d %s\n" % (len(rec) + 4, rec)
    assert len(line) == len(rec) + 4
    return with_raw_prefix(pax_header_block(line) + raw_header(b"innocent", b"0", b"%011o\0" % 1) + b"x" + b"\0" * 511)


def pax_sparse() -> bytes:
    info, data = reg("sparse.bin", b"y" * 10)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "sparse.bin",
                        "GNU.sparse.realsize": "1000000"}
    return good([(info, data)])


def gnu_sparse() -> bytes:
    return with_raw_prefix(raw_header(b"oldsparse", b"S", b"%011o\0" % 0))


def too_many_members() -> bytes:
    return good([reg(f"f{i:02d}.txt") for i in range(25)])


def too_deep() -> bytes:
    return good([reg("/".join(["d"] * 40) + "/deep.txt")])


def gzip_bomb() -> bytes:
    # 30 MB of zeros in one member: about 30 kB of gzip
    return good([reg("gzbomb.bin", bytes(30_000_000))])


def bzip2_bomb() -> bytes:
    return tar_bytes(scene_members() + [reg("bzbomb.bin", bytes(50_000_000))], "bz2")


def xz_huge_dictionary() -> bytes:
    """A valid .xz of the good package whose block header asks for a 1.5 GiB dictionary."""
    data = bytearray(lzma.compress(plain_tar_of(scene_members()), preset=0))
    pos = 12  # after the stream header
    size = (data[pos] + 1) * 4
    flags = data[pos + 1]
    p = pos + 2

    def varint(p):
        while data[p] & 0x80:
            p += 1
        return p + 1

    if flags & 0x40:
        p = varint(p)
    if flags & 0x80:
        p = varint(p)
    assert data[p] == 0x21 and data[p + 1] == 0x01, "LZMA2 filter flags expected"
    data[p + 2] = 37  # 3 << 29 bytes = 1.5 GiB
    data[pos + size - 4: pos + size] = struct.pack("<I", zlib.crc32(bytes(data[pos: pos + size - 4])))
    return bytes(data)


def truncated_gzip() -> bytes:
    body = good([reg("pad.bin", bytes(range(256)) * 40)])
    return body[: len(body) // 2]


def truncated_tar() -> bytes:
    """Cut inside the data of the last member."""
    body = plain_tar_of(scene_members() + [reg("big.txt", b"z" * 5000)])
    return body[:3 * 1024 + 512 + 2000]


def truncated_tar_header() -> bytes:
    """Every file the job needs, then a cut inside the next member's header."""
    body = plain_tar_of(scene_members() + [reg("texture.txt", b"t" * 100)])
    return body[:3 * 1024 + 200]


def truncated_tar_no_end() -> bytes:
    """Complete members, but the end-of-archive blocks are missing."""
    body = plain_tar_of(scene_members() + [reg("texture.txt", b"t" * 100)])
    return body[:4 * 1024]


def garbage_header() -> bytes:
    """Every file the job needs, then a block of garbage where the next header should be."""
    body = plain_tar_of(scene_members())
    return body[:3 * 1024] + bytes((i * 31 + 7) % 256 for i in range(512)) + bytes(1024)


def gzip_bad_crc() -> bytes:
    body = bytearray(good())
    body[-8] ^= 0xFF
    return bytes(body)


def file_then_dir() -> bytes:
    return good([reg("clash", b"file"), special("clash", tarfile.DIRTYPE)])


def dir_then_file() -> bytes:
    return good([special("clash2", tarfile.DIRTYPE), reg("clash2", b"file")])


def file_under_file() -> bytes:
    return good([reg("plain", b"file"), reg("plain/child", b"x")])


def duplicate_member() -> bytes:
    return good([reg("scene.pov", b"// second copy\n")])


def duplicate_dotted() -> bytes:
    return good([reg("./scene.pov", b"// second copy via ./\n")])


def xml_in_package(xml: bytes) -> bytes:
    return good(xml=xml)


def semantic(ini_extra: str = "", extra=(), skip=(), xml: str = GOOD_XML) -> bytes:
    return tar_bytes(scene_members(xml=xml, ini=SCENE_INI + ini_extra, skip=skip) + list(extra))


BLENDER_XML = """<distrenjob><name>b</name><backend name="blender"><blend>shot.blend</blend></backend>
<frames><frame id="1"/></frames></distrenjob>"""
FFMPEG_XML = GOOD_XML.replace("</backend>", '</backend><backend name="ffmpeg"><codec>divx</codec></backend>').replace(
    '<range first="0" last="3"/>', '<range first="0" last="3"/><frame id="4" backend="ffmpeg"><depends>0</depends></frame>')

PACKAGES = {
    "symlink": lambda: good([special("evil", tarfile.SYMTYPE, "/etc/passwd")]),
    "symlink_then_write": symlink_then_write,
    "hardlink": lambda: good([special("hard", tarfile.LNKTYPE, "scene.pov")]),
    "hardlink_outside": lambda: good([special("hard2", tarfile.LNKTYPE, "/etc/shadow")]),
    "chardev": lambda: good([special("null", tarfile.CHRTYPE)]),
    "blockdev": lambda: good([special("sda", tarfile.BLKTYPE)]),
    "fifo": lambda: good([special("pipe", tarfile.FIFOTYPE)]),
    "contiguous": lambda: good([special("contig", tarfile.CONTTYPE)]),
    "absolute": lambda: good([reg(ESCAPE + "-abs", b"x")]),
    "dotdot": lambda: good([reg("a/../../distren-corpus-escape", b"x")]),
    "dotdot_deep": lambda: good([reg("../" * 12 + "tmp/distren-corpus-escape-dd", b"x")]),
    "backslash": lambda: good([reg("..\\..\\evil.txt", b"x")]),
    "control_char": lambda: good([reg("bell\x07name", b"x")]),
    "reserved": lambda: good([reg("_distren/out/x.png", b"x")]),
    "long_name": lambda: good([reg("n" * 300, b"x")]),
    "too_deep": too_deep,
    "cve_2025_4517": lambda: cve_2025_4517(8),
    "cve_2025_4517_long": lambda: cve_2025_4517(247),
    "negative_size": negative_size,
    "pax_negative_size": pax_negative_size,
    "pax_huge_length": pax_huge_length,
    "pax_digit_run": pax_digit_run,
    "pax_oversize": pax_oversize,
    "pax_declared_huge": pax_declared_huge,
    "gnu_longname_huge": gnu_longname_huge,
    "pax_nul_path": pax_nul_path,
    "pax_path_absolute": pax_path_absolute,
    "pax_sparse": pax_sparse,
    "gnu_sparse": gnu_sparse,
    "duplicate_member": duplicate_member,
    "duplicate_dotted": duplicate_dotted,
    "file_then_dir": file_then_dir,
    "dir_then_file": dir_then_file,
    "file_under_file": file_under_file,
    "too_many_members": too_many_members,
    "truncated_gzip": truncated_gzip,
    "truncated_tar": truncated_tar,
    "truncated_tar_header": truncated_tar_header,
    "truncated_tar_no_end": truncated_tar_no_end,
    "garbage_header": garbage_header,
    "gzip_bad_crc": gzip_bad_crc,
    "gzip_bomb": gzip_bomb,
    "bzip2_bomb": bzip2_bomb,
    "xz_huge_dictionary": xz_huge_dictionary,
    "not_a_tarball": lambda: b"this is not a tarball at all\n" * 20,
    "random_bytes": lambda: bytes((i * 7919 + 13) % 251 for i in range(4096)),
    "gzip_of_text": lambda: compressed(b"hello, not a tar\n" * 100, "gz"),
    "empty_tar": lambda: plain_tar_of([]),
    "missing_job_xml": lambda: tar_bytes(scene_members()[1:]),
    "job_xml_is_dir": lambda: tar_bytes([special("distrenjob.xml", tarfile.DIRTYPE)] + scene_members()[1:]),
    "empty": lambda: b"",
    # job semantics: the backend's checks
    "ini_pre_frame_command": lambda: semantic("Pre_Frame_Command=touch /tmp/distren-corpus-escape-cmd\n"),
    "ini_post_scene_command": lambda: semantic("Post_Scene_Command=sh -c 'id > /tmp/distren-corpus-escape-cmd2'\n"),
    "ini_library_path": lambda: semantic("Library_Path=/etc\n"),
    "ini_output_file_name": lambda: semantic("Output_File_Name=/tmp/distren-corpus-escape-out.png\n"),
    "ini_input_dotdot": lambda: semantic("Input_File_Name=../x.pov\n"),
    "ini_input_absolute": lambda: semantic("Input_File_Name=/etc/passwd\n"),
    "ini_include_self": lambda: semantic("Include_Ini=scene.ini\n"),
    "povray_ini_in_package": lambda: semantic(extra=[reg("povray.ini", b"Library_Path=/etc\n")]),
    "missing_scene_file": lambda: semantic(skip=("scene.pov",)),
    "frames_outside_animation": lambda: semantic(xml=GOOD_XML.replace('<range first="0" last="3"/>', '<frame id="500"/>')),
    "blend_not_a_blend": lambda: tar_bytes([reg("distrenjob.xml", BLENDER_XML.encode()),
                                            reg("shot.blend", b"#!/bin/sh\necho this is no blend\n")]),
    "ffmpeg_unknown_codec": lambda: semantic(xml=FFMPEG_XML),
}


def oversize_xml() -> bytes:
    return (GOOD_XML + "<!--" + "x" * (1024 * 1024 + 10) + "-->").encode()


def dependency_fan_out() -> bytes:
    deps = "".join(f"<depends>distren://alpha/1/{i}</depends>" for i in range(5000))
    return GOOD_XML.replace('<range first="0" last="3"/>', f'<range first="0" last="49">{deps}</range>').encode()


def deep_nesting() -> bytes:
    return (GOOD_XML.replace("</distrenjob>", "") + "<x>" * 5000 + "</x>" * 5000 + "</distrenjob>").encode()


def utf16_doctype() -> bytes:
    """A DOCTYPE in UTF-16: the bytes b"<!DOCTYPE" do not occur in the document."""
    return ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            + GOOD_XML.split("?>", 1)[1].replace("<name>corpus</name>", "<name>&x;</name>")).encode("utf-16")


def utf16_billion_laughs() -> bytes:
    ents = "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    return ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY l0 "lol">' + ents + ']>'
            + GOOD_XML.split("?>", 1)[1].replace("<name>corpus</name>", "<name>&l9;</name>")).encode("utf-16")


XML_GENERATORS = {"oversize_xml": oversize_xml, "dependency_fan_out": dependency_fan_out,
                  "deep_nesting": deep_nesting, "utf16_doctype": utf16_doctype,
                  "utf16_billion_laughs": utf16_billion_laughs}


def load_cases() -> list[dict]:
    return json.loads(MANIFEST.read_text())["cases"]


def build(out: Path) -> dict[str, Path]:
    """Write every package of the manifest into out; return {case id: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for case in load_cases():
        if case["kind"] == "package":
            data = PACKAGES[case["input"]]()
        elif case["kind"] == "xml":
            inp = case["input"]
            xml = XML_GENERATORS[inp["generator"]]() if "generator" in inp else inp["xml"].encode()
            data = xml_in_package(xml)
        else:
            continue
        path = out / f"{case['id']}.pkg"
        path.write_bytes(data)
        paths[case["id"]] = path
    return paths


if __name__ == "__main__":
    for cid, p in build(Path(sys.argv[1])).items():
        print(f"{p.stat().st_size:>9}  {cid}")
