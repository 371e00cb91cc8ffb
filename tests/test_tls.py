"""TLS: a server over HTTPS (`serve --tls-cert/--tls-key`), the CLI trusting its CA through
`--ca-file` or DISTREN_CA_FILE (and refusing it without), and two servers rendering one job
over HTTPS. The CA and certificates are made at test time (conftest.make_tls); no network."""

from __future__ import annotations

import json
import tarfile
import time

from conftest import make_scene, run_cli

NO_CA = {"DISTREN_CA_FILE": ""}


def _pack(tmp, final: int):
    ini = make_scene(tmp / "scene", final=final)
    pkg = tmp / "scene.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg), "--width", "32", "--height", "24")
    assert r.returncode == 0, r.stderr
    return pkg


def test_cli_over_https_with_ca_file_or_environment(server_factory, tls_files, tmp_path):
    server = server_factory("alpha", slots=2, tls=tls_files)
    assert server.url.startswith("https://")
    pkg = _pack(tmp_path, final=1)
    # --ca-file
    r = run_cli("submit", str(pkg), "--wait", "--json", "--server", server.url, "--ca-file", str(tls_files.ca),
                env=NO_CA)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["state"] == "done", job
    # DISTREN_CA_FILE
    with_env = {"DISTREN_CA_FILE": str(tls_files.ca), "DISTREN_SERVER": server.url}
    r = run_cli("status", job["url"], "--json", env=with_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"]["done"] == 2
    bundle = tmp_path / "bundle.tar"
    r = run_cli("download", job["url"], "-o", str(bundle), env=with_env)
    assert r.returncode == 0, r.stderr
    with tarfile.open(bundle) as t:
        assert len([m for m in t.getmembers() if m.isfile()]) == 2


def test_client_without_the_ca_is_refused_in_one_line(server_factory, tls_files, tmp_path):
    server = server_factory("alpha", slots=0, tls=tls_files)
    r = run_cli("status", "distren://alpha", "--server", server.url, env=NO_CA)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "certificate is not trusted" in r.stderr and "--ca-file" in r.stderr, r.stderr
    # a CA file that is not one: a usage error naming it
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("hello\n")
    r = run_cli("status", "distren://alpha", "--server", server.url, "--ca-file", str(bogus))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bogus) in r.stderr, r.stderr


def test_serve_refuses_tls_files_that_do_not_load(tls_files, tmp_path):
    base = ["serve", "--name", "alpha", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:9"]
    for extra, says in ((["--tls-cert", str(tls_files.cert)], "go together"),
                        (["--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.ca)], "do not load"),
                        (["--tls-cert", str(tls_files.cert), "--tls-key", str(tmp_path / "none.key")], "cannot read"),
                        (["--ca-file", str(tmp_path / "none.pem")], "CA file")):
        r = run_cli(*base, *extra, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        assert r.stderr.count("\n") == 1 and says in r.stderr, (extra, r.stderr)


def test_federation_over_tls(farm, tls_files, tmp_path):
    home = farm.add("alpha", 0, ["beta"], tls=tls_files)
    farm.add("beta", 2, ["alpha"], tls=tls_files)
    # a third server that does not trust the CA: its requests to alpha fail on the certificate
    stranger = farm.add("gamma", 1, ["alpha"])
    farm.start()
    pkg = _pack(tmp_path, final=3)
    client = home.client()
    job = client.submit(pkg)
    info = client.wait(job["url"], interval=0.2, timeout=120)
    assert info["state"] == "done", info
    assert {f["rendered_by"] for f in client.frames(job["url"])} == {"beta"}
    # a frame's output fetched through beta: beta streams it from alpha over HTTPS
    out = tmp_path / "frame.tar"
    r = run_cli("download", f"{job['url']}/2", "-o", str(out), "--server", farm.servers["beta"].url,
                "--ca-file", str(tls_files.ca), env=NO_CA)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == client_download(client, f"{job['url']}/2", tmp_path / "direct.tar")
    with stranger.client() as sc:
        deadline = time.monotonic() + 30
        while True:
            peer = sc.peers()[0]
            if peer["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert not peer["healthy"] and "certificate is not trusted" in (peer["last_error"] or ""), peer


def client_download(client, url: str, dest):
    return client.download(url, dest).read_bytes()


def test_tls_server_stops_at_once_with_an_idle_client_connected(server_factory, tls_files):
    server = server_factory("alpha", slots=0, tls=tls_files)
    with server.client() as client:
        client.server_info()   # the connection stays open (kept alive), the client does not read
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    assert took < 5, took
