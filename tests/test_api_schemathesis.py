"""The HTTP API fuzzed from its own OpenAPI document (schemathesis) against a real server with a
finished job: whatever the generated path, query or body, no answer is a 5xx and every error is
JSON naming the problem."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from conftest import ServerProcess, make_scene, run_cli


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    s = ServerProcess(tmp / "data", "alpha", 1).start()
    ini = make_scene(tmp / "scene", final=1)
    pkg = tmp / "p.tar.gz"
    assert run_cli("pack", str(ini), "-o", str(pkg)).returncode == 0
    c = s.client()
    job = c.submit(pkg)
    c.wait(job["url"], interval=0.1, timeout=120)
    yield schemathesis.openapi.from_url(s.url + "/api/v1/openapi.json")
    s.stop()


def test_no_server_errors_and_json_errors(api_schema):
    """Every operation of the OpenAPI document, with generated paths, queries and bodies."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # the event stream never ends by design: tests/test_events.py covers it (its refusals too)
    operations = [op for op in operations if op.path != "/api/v1/events"]
    assert len(operations) >= 12
    calls = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(timeout=30)
            calls.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and body["error"]["message"], body

        check()
    assert len(calls) >= 5 * len(operations)  # the generated requests really reached the server
