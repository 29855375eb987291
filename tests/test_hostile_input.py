"""Hostile input against a real backend (uvicorn, real Redis): never a 500, never a value changed.

Every request goes over one keep-alive connection, so a response that fails half-way (and makes
uvicorn drop the connection) shows up as the next request failing too. Raw JSON text is sent, so
the literals Python's json module accepts (NaN, Infinity, -Infinity, 1e400, lone surrogates)
reach the API exactly as a hostile client writes them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from backend.workers.redis.keys import RedisKeys
from tests.api_server import BackendProcess, delete_prefix

pytestmark = [pytest.mark.redis_only]

TOKEN = "hostile-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400"]


class Api:
    def __init__(self, backend: BackendProcess, redis_url: str, prefix: str) -> None:
        self.backend = backend
        self.conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=10)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.keys = RedisKeys(prefix)

    def call(self, method: str, path: str, body: str | bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        self.conn.request(method, path, body=data, headers=AUTH if headers is None else headers)
        response = self.conn.getresponse()
        raw = response.read()
        text = raw.decode("utf-8")  # strict: the body must be printable UTF-8
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(text, parse_constant=_no_constants)
        return response.status, text

    def still_answers(self) -> None:
        status, body = self.call("GET", "/api/health")
        assert status == 200 and body == {"status": "ok"}


def _no_constants(name: str) -> None:
    raise AssertionError(f"the response holds {name}, which is not JSON")


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    prefix = f"bbtest-{uuid.uuid4().hex[:10]}"
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix, "BAGBOT_API_TOKEN": TOKEN}
    server = BackendProcess(tmp_path_factory.mktemp("hostile"), env)
    client: Api | None = None
    try:
        server.wait_ready()
        client = Api(server, redis_url, prefix)
        yield client
    finally:
        server.stop()
        if client is not None:
            client.conn.close()
            client.redis.close()
        asyncio.run(delete_prefix(redis_url, prefix))
        log = server.log()
        assert "Traceback" not in log and " 500 " not in log, log[-5000:]


def enqueue_body(**fields: str) -> str:
    """A job body whose values are raw JSON text (so NaN and escapes go through as written)."""
    parts = {"name": '"t.job"', **fields}
    return "{" + ", ".join(f'"{key}": {value}' for key, value in parts.items()) + "}"


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize(("where", "template", "field"), [
    ("args", "[1, {x}]", "args[1]"),
    ("kwargs", '{{"a": [1, {{"b": {x}}}]}}', "kwargs.a[1].b"),
])
def test_non_finite_numbers_in_payloads_are_refused_naming_the_field(
    api: Api, literal: str, where: str, template: str, field: str
) -> None:
    status, body = api.call("POST", "/api/jobs", enqueue_body(**{where: template.format(x=literal)}))
    assert status == 422, body
    assert field in body["detail"] and "finite" in body["detail"]
    api.still_answers()


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("field", ["delay", "timeout", "priority", "max_attempts", "limit"])
def test_non_finite_numbers_in_fields_get_a_printable_422(api: Api, literal: str, field: str) -> None:
    extra = {"limit_key": '"k"'} if field == "limit" else {}
    status, body = api.call("POST", "/api/jobs", enqueue_body(**{field: literal}, **extra))
    assert status == 422, body
    assert field in json.dumps(body)
    api.still_answers()


@pytest.mark.parametrize(("field", "value"), [
    ("name", '"bad\\ud800"'), ("id", '"x\\ud800"'), ("queue", '"q\\ud800"'), ("unique_key", '"\\ud800"'),
    ("limit_key", '"\\udfff"'), ("delay", '"\\ud800"'), ("\\ud800", "1"), ("args", '["\\ud800"]'),
    ("kwargs", '{"\\ud800": 1}'),
])
def test_lone_surrogates_get_a_printable_422(api: Api, field: str, value: str) -> None:
    extra = {"limit": "1"} if field == "limit_key" else {}
    status, body = api.call("POST", "/api/jobs", enqueue_body(**{field: value}, **extra))
    assert status == 422, body
    api.still_answers()


@pytest.mark.parametrize("cursor", ["nan:x", "inf:x", "-inf:x", "1e400:x", "nan"])
def test_a_non_finite_cursor_is_refused(api: Api, cursor: str) -> None:
    status, body = api.call("GET", f"/api/jobs?cursor={cursor}")
    assert status == 422, body
    api.still_answers()


def test_a_huge_body_from_a_plain_client_reads_a_413(api: Api) -> None:
    request = urllib.request.Request(api.backend.base_url + "/api/jobs", data=b"x" * (8 * 1024 * 1024),
                                     headers=AUTH, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert "too large" in json.loads(refused.value.read())["detail"]


def test_the_token_is_checked_before_the_body(api: Api) -> None:
    plain = {"Content-Type": "application/json"}
    for body in ("{not json", '{"name": 1}', enqueue_body(args="[NaN]")):
        status, _ = api.call("POST", "/api/jobs", body, headers=plain)
        assert status == 401, body
        wrong = {**plain, "Authorization": "Bearer wrong-one"}
        status, _ = api.call("POST", "/api/jobs", body, headers=wrong)
        assert status == 401, body
        status, _ = api.call("POST", "/api/jobs", body)
        assert status == 422, body
    status, _ = api.call("GET", "/api/jobs?limit=0", headers=plain)  # reads stay open
    assert status == 422


def test_a_corrupt_record_is_shown_flagged_and_never_a_500(api: Api) -> None:
    job_id = f"c{uuid.uuid4().hex[:8]}"
    status, job = api.call("POST", "/api/jobs", enqueue_body(id=f'"{job_id}"', delay="3600"))
    assert status == 201, job
    qkeys = api.keys.queue("default")
    api.redis.hset(qkeys.job(job_id), mapping={"state": "garbage", "args": "{{{not json"})
    status, got = api.call("GET", f"/api/jobs/{job_id}")
    assert status == 200 and got["state"] == "corrupt" and got["unreadable"]["args"] == "{{{not json"
    status, page = api.call("GET", "/api/jobs?limit=500")
    assert status == 200 and job_id in {j["id"] for j in page["jobs"]}
    status, again = api.call("POST", "/api/jobs", enqueue_body(id=f'"{job_id}"'))
    assert status == 200 and again["state"] == "corrupt"
    api.redis.hset(qkeys.stats, "enq|t.bad", "12abc")
    api.redis.hset(api.keys.schedules, "broken", "{not json")
    status, text = api.call("GET", "/api/metrics")
    assert status == 200 and "bagbot_unreadable_values 1.0" in text
    status, schedules = api.call("GET", "/api/schedules")
    assert status == 200 and "broken" not in json.dumps(schedules)
    status, _ = api.call("GET", "/api/queues")
    assert status == 200


def test_a_retry_that_would_break_uniqueness_is_refused_naming_the_holder(api: Api) -> None:
    key = f'"u-{uuid.uuid4().hex[:8]}"'
    _, first = api.call("POST", "/api/jobs", enqueue_body(unique_key=key, delay="3600"))
    status, _ = api.call("POST", f"/api/jobs/{first['id']}/cancel")
    assert status == 200
    status, second = api.call("POST", "/api/jobs", enqueue_body(unique_key=key, delay="3600"))
    assert status == 201 and second["id"] != first["id"]
    status, body = api.call("POST", f"/api/jobs/{first['id']}/retry")
    assert status == 409 and second["id"] in body["detail"]
    status, got = api.call("GET", f"/api/jobs/{first['id']}")
    assert got["state"] == "cancelled"


@pytest.mark.parametrize("depth", [200, 300, 400_000])
def test_deep_values_never_make_a_500(api: Api, depth: int) -> None:
    status, body = api.call("POST", "/api/jobs", enqueue_body(args="[" * depth + "]" * depth))
    assert status in (201, 400, 422), body
    if depth > 255:  # deeper than JSON encoding allows: refused, not stored changed
        assert status in (400, 422)
    api.still_answers()


def test_a_huge_string_and_many_keys_are_stored_unchanged(api: Api) -> None:
    kwargs = {f"k{i}": "é" * 50 for i in range(2000)}
    body = json.dumps({"name": "t.job", "kwargs": kwargs, "delay": 3600})
    status, job = api.call("POST", "/api/jobs", body)
    assert status == 201
    status, got = api.call("GET", f"/api/jobs/{job['id']}")
    assert status == 200 and got["kwargs"] == kwargs
