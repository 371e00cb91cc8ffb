"""Shared fixtures: real server processes on loopback ports, small POV-Ray scenes, packages."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from distren.client import Client

ROOT = Path(__file__).resolve().parent.parent
DISTREN = [sys.executable, "-m", "distren.cli"]
# A third-party backend as a plug-in ships it (tests/plugins/toy: the `toyrender` program and
# its backend, registered through the `distren.backends` entry point): found in this process
# (the backend contract runs over it), and by subprocesses given TOY_ENV.
TOY_PLUGIN = ROOT / "tests" / "plugins" / "toy"
sys.path.insert(0, str(TOY_PLUGIN))
TOY_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TOY_PLUGIN), os.environ.get("PYTHONPATH")]))}

# A small animated scene: the clock moves a sphere and changes its colour.
SCENE_POV = """#version 3.7;
global_settings { assumed_gamma 1.0 }
#include "colors.inc"
#include "local.inc"
camera { location <0, 2, -5> look_at <0, 0, 0> }
light_source { <2, 4, -3> color White }
sphere { <sin(clock * 2 * pi), 0, 0>, 1 pigment { color rgb <clock, 0.5, 1 - clock> } }
plane { y, -1 pigment { checker FloorA FloorB } }
"""
SCENE_INC = "#declare FloorA = rgb <0.9, 0.9, 0.9>;\n#declare FloorB = rgb <0.2, 0.3, 0.6>;\n"
SCENE_INI = """; test animation
Input_File_Name=scene.pov
Initial_Frame=0
Final_Frame={final}
Initial_Clock=0
Final_Clock=1
Width=48
Height=36
Antialias=on
"""


# DISTREN_TEST_UNCONFINED=1 switches the render sandbox's file-system confinement off, to show
# that the sandbox tests (tests/test_hostile_scenes.py, the Blender one in tests/test_blender.py)
# fail without it: every `bwrap` this test session starts (in-process and in server processes,
# found on PATH) is this stand-in, which runs the real bwrap with every top-level folder of the
# host (its /tmp, /etc, /root, the data folders, ...) mounted over the sandbox's view, as a
# renderer without a sandbox would see them. Never set it outside such a demonstration.
UNCONFINED_BWRAP = """#!{python}
import os, sys
args = sys.argv[1:]
end = args.index("--")
host = []
for entry in sorted(os.listdir("/")):
    path = "/" + entry
    if entry not in ("proc", "dev", "sys") and os.path.isdir(path) and not os.path.islink(path):
        host += ["--bind", path, path]
os.execv({bwrap!r}, [{bwrap!r}, *args[:end], *host, *args[end:]])
"""


@pytest.fixture(scope="session", autouse=True)
def unconfined_sandbox(tmp_path_factory):
    """With DISTREN_TEST_UNCONFINED=1, put the unconfined bwrap first on PATH (see above)."""
    if os.environ.get("DISTREN_TEST_UNCONFINED") != "1":
        yield
        return
    import shutil

    folder = tmp_path_factory.mktemp("unconfined-bin")
    shim = folder / "bwrap"
    shim.write_text(UNCONFINED_BWRAP.format(python=sys.executable, bwrap=shutil.which("bwrap")))
    shim.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}{os.pathsep}{old}"
    yield
    os.environ["PATH"] = old

_PORTS_PER_WORKER = 1500
_next_port: list[int] = []


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up here), from a block
    of its own for each xdist worker. A port the kernel hands out for port 0 can be taken by some
    other test's outgoing connection before the server binds it (seen in CI: "the port is
    taken"); outgoing connections never get ports below the ephemeral range."""
    if not _next_port:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        _next_port.append(10000 + (index % 14) * _PORTS_PER_WORKER + os.getpid() % 100 * 10)
    base = 10000 + (_next_port[0] - 10000) // _PORTS_PER_WORKER * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = _next_port[0]
        _next_port[0] = base + (port + 1 - base) % _PORTS_PER_WORKER
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in this worker's block")


def make_scene(folder: Path, final: int = 9) -> Path:
    """Write the test scene into folder; returns the INI's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scene.pov").write_text(SCENE_POV)
    (folder / "local.inc").write_text(SCENE_INC)
    ini = folder / "scene.ini"
    ini.write_text(SCENE_INI.format(final=final))
    return ini


def wait_for(check, timeout: float = 30, what: str = "condition", every: float = 0.05):
    """Call `check` until it returns something true (returned); AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def failing_package(folder: Path, final: int, failing: int, message: str = "boom") -> Path:
    """The test scene (frames 0..final) packed with `distren pack`, its frame `failing` ending
    in a POV-Ray #error; returns the package."""
    make_scene(folder, final=final)
    (folder / "scene.pov").write_text((folder / "scene.pov").read_text()
                                      + f'#if (frame_number = {failing}) #error "{message}" #end\n')
    pkg = folder.parent / f"{folder.name}.tar.gz"
    r = run_cli("pack", str(folder / "scene.ini"), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return pkg


def dependent_package(folder: Path, dep_url: str, dep_file: str, last_frame: int = 0) -> Path:
    """A package whose frames 0..last_frame depend on dep_url and map its output file onto a
    plane: they cannot even parse unless the dependency's output is unpacked where
    docs/job-format.md says (_distren/deps/<server>/<job>/<frame>/)."""
    import tarfile

    from distren.url import parse_url

    u = parse_url(dep_url)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "use.pov").write_text(f"""#version 3.7;
global_settings {{ assumed_gamma 1.0 }}
camera {{ location <0.5, 0.5, -1> look_at <0.5, 0.5, 0> }}
plane {{ z, 0 pigment {{ image_map {{ png "_distren/deps/{u.server}/{u.job}/{u.frame}/{dep_file}" }} }}
  finish {{ emission 1 }} }}
""")
    (folder / "distrenjob.xml").write_text(f"""<distrenjob><name>use</name>
<backend name="povray"><scene>use.pov</scene><width>16</width><height>12</height>
<initial-frame>0</initial-frame><final-frame>{max(1, last_frame)}</final-frame></backend>
<frames><range first="0" last="{last_frame}"><depends>{dep_url}</depends></range></frames></distrenjob>""")
    pkg = folder.parent / f"{folder.name}.tar"
    with tarfile.open(pkg, "w") as t:
        t.add(folder / "distrenjob.xml", "distrenjob.xml")
        t.add(folder / "use.pov", "use.pov")
    return pkg


@dataclass(frozen=True)
class TLSFiles:
    """A certificate authority made for a test, and a server certificate it signed for
    127.0.0.1 and localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> TLSFiles:
    """A CA and a server certificate, made now with `cryptography` (EC P-256: fast to make)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("distren test CA")).issuer_name(name("distren test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


class ServerProcess:
    """`distren serve` in a subprocess, on a free loopback port, with its own data folder;
    with `tls`, over HTTPS with that certificate, trusting that CA for its peers."""

    def __init__(self, data: Path, name: str = "alpha", slots: int = 2, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None, tls: TLSFiles | None = None):
        self.data, self.name, self.slots, self.extra = data, name, slots, extra or []
        self.env = env
        self.prefix = prefix or []  # e.g. prlimit
        self.tls = tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = data.parent / f"{name}-{self.port}.log"

    def start(self) -> "ServerProcess":
        tls = [] if self.tls is None else ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key),
                                           "--ca-file", str(self.tls.ca)]
        cmd = self.prefix + DISTREN + ["serve", "--name", self.name, "--listen", f"127.0.0.1:{self.port}",
                         "--data", str(self.data), "--slots", str(self.slots), *tls, *self.extra]
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                verify = True if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca))
                # 401: the server protects reads
                if httpx.get(self.url + "/api/v1/server", timeout=1, verify=verify).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def client(self) -> Client:
        return Client(self.url, ca_file=None if self.tls is None else self.tls.ca)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._logf.close()


@pytest.fixture
def server_factory(tmp_path):
    started: list[ServerProcess] = []

    def factory(name: str = "alpha", slots: int = 2, data: Path | None = None, extra=None,
                env: dict[str, str] | None = None, tls: TLSFiles | None = None) -> ServerProcess:
        s = ServerProcess(data or tmp_path / f"data-{name}", name, slots, extra, env, tls=tls).start()
        started.append(s)
        return s

    yield factory
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory) -> ServerProcess:
    return server_factory()


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(DISTREN + list(args), capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=timeout)


def povray_direct(scene_dir: Path, frame: int, out: Path, ini: str = "scene.ini", extra: list[str] = ()) -> Path:
    """Render one frame with POV-Ray itself, the way a person would: `povray scene.ini +SFn +EFn`."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    subprocess.run(["povray", ini, f"+SF{frame}", f"+EF{frame}", "-D", "-P", f"+O{out}/direct", *extra],
                   cwd=scene_dir, check=True, capture_output=True, timeout=120)
    new = sorted(set(out.iterdir()) - before)
    assert len(new) == 1, new
    return new[0]


def pixels(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size, im.mode, im.tobytes()


LEASE = ["--lease-seconds", "3", "--heartbeat-seconds", "0.5", "--claim-backoff-max", "0.3", "--watch-seconds", "0.3"]


class Farm:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.secret = tmp / "secret"
        self.secret.write_text("a federation secret of enough length\n")
        self.servers: dict[str, ServerProcess] = {}

    def add(self, name: str, slots: int, peers: list[str], extra: list[str] = (),
            env: dict[str, str] | None = None, tls: TLSFiles | None = None) -> ServerProcess:
        s = ServerProcess(self.tmp / f"data-{name}", name, slots, env=env, tls=tls)
        self.servers[name] = s
        s.peer_names = peers
        s.extra = ["--federation-secret-file", str(self.secret), *LEASE, *extra]
        return s

    def start(self) -> None:
        for s in self.servers.values():
            for p in s.peer_names:
                url = self.servers[p].url if p in self.servers else "http://127.0.0.1:9"
                s.extra += ["--peer", f"{p}={url}"]
            s.start()

    def stop(self) -> None:
        for s in self.servers.values():
            if s.proc is not None:
                s.stop()


@pytest.fixture
def farm(tmp_path):
    f = Farm(tmp_path)
    yield f
    f.stop()


def renders_of(data: Path) -> list[int]:
    """The sandboxes and POV-Ray processes of the server whose data folder is `data`."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() in ("bwrap", "povray") \
                    and str(data).encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


def bundle_images(bundle: Path) -> dict[str, tuple]:
    """Every image in a bundle tarball: name -> (size, mode, pixels)."""
    import io
    import tarfile

    from PIL import Image

    out = {}
    with tarfile.open(bundle) as t:
        for m in t.getmembers():
            if m.isfile():
                with Image.open(io.BytesIO(t.extractfile(m).read())) as im:
                    out[m.name] = (im.size, im.mode, im.tobytes())
    return out
