"""Server settings: one model (server/config.py) gives the flags, the TOML --config keys, the
DISTREN_* environment variables, --print-config and the README's table; every value is checked;
a problem is one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import pytest

from conftest import DISTREN, ROOT, free_port, make_scene, run_cli
from distren.cli import build_parser
from distren.server.config import ServerConfig, user_settings
from distren.server.settings import env_var, flag, load, markdown_table


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without DISTREN_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTREN_")}
    return {**env, **extra}


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_flags_win_over_the_file_which_wins_over_the_environment(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("DISTREN_")]:
        monkeypatch.delenv(key)
    conf = tmp_path / "c.toml"
    conf.write_text('name = "fromfile"\ndata = "d"\nlease_seconds = 20\nwatch_seconds = 7\n[peers]\nb = "http://b:1"\n')
    monkeypatch.setenv("DISTREN_LEASE_SECONDS", "30")
    monkeypatch.setenv("DISTREN_WATCH_SECONDS", "8")
    monkeypatch.setenv("DISTREN_PEER_TIMEOUT", "9")
    monkeypatch.setenv("DISTREN_SLOTS", "auto")
    args = serve_args("--config", str(conf), "--lease-seconds", "10", "--peer", "c=http://c:2/")
    c = load(args, args.config)
    assert (c.name, c.lease_seconds, c.watch_seconds, c.peer_timeout) == ("fromfile", 10.0, 7.0, 9.0)
    assert c.claim_backoff_max == 5.0                        # the default
    assert c.peers == {"b": "http://b:1", "c": "http://c:2"}   # the file's table and the flag's peer
    assert c.slots_auto and c.slots >= 8
    assert isinstance(c, ServerConfig) and c.retry_elsewhere == 30.0 and c.tar_limits.max_members == 10_000


@pytest.mark.parametrize("toml, words", [
    ("slots = 2.9", "setting slots = 2.9 in"),
    ('peers = "ab"', "setting peers = 'ab' in"),
    ("slots = true", "setting slots = True in"),
    ("lease_seconds = 0", "setting lease_seconds = 0 in"),
    ("lease_seconds = nan", "must be a finite number"),
    ('listen = "nowhere"', "setting listen = 'nowhere' in"),
    ("[peers]\nb = 5", "setting peers.b = 5 in"),
    ("slots_auto = true", "slots_auto is not a setting"),
    ("max_failures = 3\nmax_failure = 3", "max_failure in"),
    ("slots = [", "cannot read config"),
])
def test_a_bad_value_in_the_file_is_one_line_naming_the_setting(tmp_path, toml, words):
    conf = tmp_path / "c.toml"
    conf.write_text(f'name = "x"\ndata = "{tmp_path / "d"}"\n{toml}\n')
    r = run_cli("serve", "--config", str(conf), env=clean_env(), timeout=60)
    assert r.returncode == 2 and r.stdout == "", r
    line, = r.stderr.splitlines()
    assert line.startswith("distren: error: ") and words in line, line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv, env, words", [
    (["--slots", "2.9"], {}, "setting slots = '2.9' from --slots: must be a whole number"),
    (["--max-frames", "0"], {}, "setting max_frames = '0' from --max-frames: must be > 0"),
    ([], {"DISTREN_RENDER_MEMORY": "lots"}, "setting render_memory = 'lots' from $DISTREN_RENDER_MEMORY"),
    ([], {"DISTREN_PEERS": '"ab"'}, "setting peers = 'ab' from $DISTREN_PEERS"),
    ([], {"DISTREN_PEERS": "ab"}, "DISTREN_PEERS is a JSON object"),
    (["--heartbeat-seconds", "61"], {}, "must be below lease_seconds (60), got 61"),
    (["--peer", "b=ftp://x"], {}, "--peer 'b=ftp://x': expected NAME=http://HOST:PORT"),
])
def test_a_bad_flag_or_environment_variable_is_one_line_naming_the_setting(tmp_path, argv, env, words):
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d"), *argv, env=clean_env(**env), timeout=60)
    assert r.returncode == 2, r
    line, = r.stderr.splitlines()
    assert words in line, line


def test_name_and_data_are_required(tmp_path):
    r = run_cli("serve", "--data", str(tmp_path), env=clean_env(), timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == \
        "distren: error: setting name is required: give --name, name = ... in --config, or DISTREN_NAME"


def test_print_config_gives_a_file_that_gives_the_same_settings(tmp_path, monkeypatch):
    conf = tmp_path / "c.toml"
    conf.write_text(f'data = "{tmp_path / "d"}"\nmax_failures = 5\n[peers]\nb = "http://b:1"\n')
    env = clean_env(DISTREN_NAME="envname", DISTREN_SLOTS="auto", DISTREN_WATCH_SECONDS="0.25")
    r = run_cli("serve", "--config", str(conf), "--render-cpu-seconds", "90", "--peer", "c=http://c:2",
                "--print-config", env=env, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r
    printed = tmp_path / "printed.toml"
    printed.write_text(r.stdout)
    for line in ('name = "envname"', 'slots = "auto"', "max_failures = 5", "watch_seconds = 0.25",
                 "render_cpu_seconds = 90", 'c = "http://c:2"', "lease_seconds = 60.0",
                 "# heartbeat_seconds: not set"):
        assert line in r.stdout, r.stdout
    again = run_cli("serve", "--config", str(printed), "--print-config", env=clean_env(), timeout=60)
    assert again.returncode == 0 and again.stdout == r.stdout
    # the settings themselves: from flags, file and environment, and from the printed file alone
    for key in [k for k in os.environ if k.startswith("DISTREN_")]:
        monkeypatch.delenv(key)
    from_printed = load(serve_args("--config", str(printed)), printed)
    for key, value in env.items():
        if key.startswith("DISTREN_"):
            monkeypatch.setenv(key, value)
    args = serve_args("--config", str(conf), "--render-cpu-seconds", "90", "--peer", "c=http://c:2")
    assert load(args, conf).model_dump() == from_printed.model_dump()
    assert not (tmp_path / "d").exists()   # printing starts nothing


def test_a_server_runs_with_the_settings_of_its_file_and_environment(tmp_path):
    """The settings reach the running server: the port and slots from the file, the package
    size limit from the environment."""
    port = free_port()
    conf = tmp_path / "farm.toml"
    conf.write_text(f'name = "filed"\ndata = "{tmp_path / "d"}"\nlisten = "127.0.0.1:{port}"\nslots = 0\n')
    proc = subprocess.Popen(DISTREN + ["serve", "--config", str(conf)], env=clean_env(DISTREN_MAX_JOB_BYTES="300"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(url + "/api/v1/server", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert info["name"] == "filed" and info["slots"] == 0
        ini = make_scene(tmp_path / "scene", final=1)
        assert run_cli("pack", str(ini), "-o", str(tmp_path / "job.tar.gz")).returncode == 0
        assert (tmp_path / "job.tar.gz").stat().st_size > 300
        r = run_cli("submit", str(tmp_path / "job.tar.gz"), "--server", url, timeout=60)
        assert r.returncode == 3 and "413" in r.stderr, r
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_readme_table_is_the_models():
    """Every setting is in the README with its flag, environment variable and default, and
    nothing else is (scripts/settings_table.py --write makes it)."""
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme
    for name, field in user_settings().items():
        assert field.description, name
        assert f"| `{flag(name)}" in readme and f"`{env_var(name)}`" in readme
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    switches = {"--no-" + flag(name)[2:] for name, field in user_settings().items() if field.annotation is bool}
    assert {flag(name) for name in user_settings()} | switches | {"--config", "--print-config", "-h", "--help"} == flags
