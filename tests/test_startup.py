"""What keeps `distren serve` from starting is one line on stderr naming it, and exit code 2,
through the real command line (a newer database: tests/test_migrations.py; a folder that is
not distren's: tests/test_render_e2e.py)."""

from __future__ import annotations

import socket

from conftest import run_cli


def one_line(r) -> str:
    assert r.returncode == 2, r
    line, = r.stderr.splitlines()
    assert line.startswith("distren: error: "), line
    return line


def test_a_taken_port_is_named_as_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
                    timeout=60)
    assert one_line(r) == f"distren: error: cannot listen on 127.0.0.1:{port}: the port is taken " \
                          "(another server listens on it)"


def test_an_address_the_machine_does_not_have_is_not_called_a_taken_port(tmp_path):
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d"), "--listen", "192.0.2.1:7780", timeout=60)
    line = one_line(r)
    assert "cannot listen on 192.0.2.1:7780: Cannot assign requested address" in line and "taken" not in line


def test_a_data_folder_that_cannot_be_made_or_written(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "file" / "data"), timeout=60)
    assert one_line(r) == f"distren: error: --data {tmp_path / 'file' / 'data'}: cannot write to the data folder: " \
                          "Not a directory"
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "file"), timeout=60)
    assert one_line(r) == f"distren: error: --data {tmp_path / 'file'}: not a folder"


def test_a_database_that_is_not_one(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "distren.sqlite3").write_bytes(b"not a database, " * 100)
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d"), timeout=60)
    assert one_line(r) == f"distren: error: --data {tmp_path / 'd'}: cannot open the database distren.sqlite3: " \
                          "file is not a database"
