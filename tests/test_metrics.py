"""GET /metrics on a real server: the Prometheus text parses with prometheus-client's own
parser, and its counts agree with the API; every metric and every route is documented."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, make_scene, run_cli
from distren.server.app import create_app
from distren.server.config import ServerConfig

DOCS = ROOT / "docs"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_agree_with_the_api(server, tmp_path):
    client = server.client()
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(make_scene(tmp_path / "scene", final=3)), "-o", str(pkg)).returncode == 0
    job = client.wait(client.submit(pkg)["url"], interval=0.2, timeout=120)
    assert job["state"] == "done"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    assert run_cli("submit", str(bad), "--server", server.url).returncode == 3
    bundle = tmp_path / "b.tar"
    client.download(job["url"], bundle)
    m = scrape(server.url)
    api = client.job(job["url"])["frames"]
    for state, n in api.items():
        assert m[("distren_frames", (("state", state),))] == n, state
    assert m[("distren_renders_total", (("backend", "povray"), ("outcome", "done")))] == 4
    assert m[("distren_render_seconds_count", (("backend", "povray"),))] == 4
    assert m[("distren_render_seconds_sum", (("backend", "povray"),))] > 0
    assert m[("distren_intake_refusals_total", (("code", "bad_package"),))] == 1
    assert m[("distren_received_bytes_total", ())] >= pkg.stat().st_size + bad.stat().st_size
    assert m[("distren_sent_bytes_total", ())] >= bundle.stat().st_size
    assert m[("distren_slots", ())] >= 1 and m[("distren_slots_busy", ())] == 0
    assert m[("distren_peers", ())] == 0 and m[("distren_peers_up", ())] == 0
    assert m[("distren_lease_expiries_total", ())] == 0


def documented_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md"))) + (ROOT / "README.md").read_text()


def test_every_metric_is_documented(tmp_path):
    from distren.metrics import Metrics

    names = {family.name for family in Metrics(lambda: {"frames": {}, "slots": 0, "slots_busy": 0, "peers": 0,
                                                        "peers_up": 0}).registry.collect()}
    assert len(names) >= 10
    api = (DOCS / "api.md").read_text()
    missing = sorted(n for n in names if f"`{n}" not in api)
    assert not missing, f"metrics missing from docs/api.md: {missing}"


def test_every_route_is_documented(tmp_path):
    app = create_app(ServerConfig(name="docs", data=tmp_path / "data"))
    text = documented_text()
    paths = set(app.openapi()["paths"])
    assert "/api/v1/jobs" in paths and "/metrics" in paths
    missing = []
    for path in sorted(paths):
        short = re.sub(r"\{[a-z_]+\}", "{x}", path.removeprefix("/api/v1"))
        documented = {re.sub(r"\{[a-z_]+\}", "{x}", m) for m in re.findall(r"`(?:[A-Z]+ )?(/[^`\s]*)`", text)}
        if short not in documented and path not in documented:
            missing.append(path)
    assert not missing, f"routes missing from the docs: {missing}"
