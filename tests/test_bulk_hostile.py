"""Hostile values against the bulk and pause endpoints of a real backend (uvicorn, real Redis):
always a printable 422 (or 401 without the token), never a 500, and nothing moved.

Raw JSON text is sent, so NaN, Infinity, 1e400 and lone surrogates reach the API as a hostile
client writes them (see test_hostile_input.py, whose backend fixture this module shares).
"""

from __future__ import annotations

import pytest

from tests.test_hostile_input import NON_FINITE, Api, api, enqueue_body

__all__ = ["api"]  # the module-scoped backend fixture

pytestmark = [pytest.mark.redis_only]

BULK = ["/api/jobs/retry", "/api/jobs/cancel"]


def failed_job(api: Api) -> str:
    status, job = api.call("POST", "/api/jobs", enqueue_body(delay="3600"))
    assert status == 201, job
    status, _ = api.call("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 200
    return str(job["id"])


def state(api: Api, job_id: str) -> str:
    status, job = api.call("GET", f"/api/jobs/{job_id}")
    assert status == 200
    return str(job["state"])


@pytest.mark.parametrize("path", BULK)
@pytest.mark.parametrize("body", [
    *(f'{{"limit": {x}}}' for x in NON_FINITE),
    '{"limit": 99999999999999999999999999}', '{"limit": -1}', '{"limit": true}', '{"limit": "1"}',
    '{"state": "\\ud800"}', '{"state": "failed\\u0000"}', '{"state": 7}', '{"state": ["failed"]}',
    '{"queue": "q\\ud800"}', '{"queue": "q\\n"}', '{"queue": "{q}"}', '{"queue": ""}',
    '{"name": "n\\udfff"}', '{"name": "' + "n" * 129 + '"}',
    '{"ids": ["\\ud800"]}', '{"ids": [null]}', '{"ids": [{"a": 1}]}', '{"ids": {"a": 1}}',
    '{"ids": ["' + "x" * 65 + '"]}', '{"ids": ["a\\u0000"]}',
    '{"\\ud800": 1}', '{"limit": 1, "limit": 0}', "[]", "null", '"failed"', "{not json",
])
def test_hostile_bulk_filters_are_a_printable_422(api: Api, path: str, body: str) -> None:
    job_id = failed_job(api)
    status, reply = api.call("POST", path, body)
    assert status == 422, reply
    assert state(api, job_id) == "cancelled"
    api.still_answers()


@pytest.mark.parametrize("body", [
    *(f'{{"older_than": {x}}}' for x in NON_FINITE),
    '{"older_than": -0.5}', '{"older_than": "1"}', '{"state": "running"}', '{"state": "\\ud800"}',
    '{"queue": "a b"}', "[1]",
])
def test_hostile_purge_values_are_a_printable_422(api: Api, body: str) -> None:
    job_id = failed_job(api)
    status, reply = api.call("POST", "/api/jobs/purge", body)
    assert status == 422, reply
    assert state(api, job_id) == "cancelled"
    api.still_answers()


@pytest.mark.parametrize("queue", ["%7Bx%7D", "%ED%A0%80", "%00", "a%2Fb", "x" * 200, "%20", "a%7Cb"])
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_hostile_queue_names_in_the_path_never_pause_anything(api: Api, queue: str, action: str) -> None:
    status, reply = api.call("POST", f"/api/queues/{queue}/{action}")
    assert status in (404, 422), reply  # a slash or dot segment may not reach the route at all
    status, queues = api.call("GET", "/api/queues")
    assert status == 200 and not any(q["paused"] for q in queues["queues"])
    api.still_answers()


@pytest.mark.parametrize("path", [*BULK, "/api/jobs/purge", "/api/queues/default/pause"])
def test_the_token_is_checked_before_the_filter(api: Api, path: str) -> None:
    plain = {"Content-Type": "application/json"}
    for body in ('{"limit": NaN}', "{not json", '{"state": "nope"}', "{}"):
        status, _ = api.call("POST", path, body, headers=plain)
        assert status == 401, body


def test_a_corrupt_record_is_matched_but_never_moved_nor_a_500(api: Api) -> None:
    job_id = failed_job(api)
    api.redis.hset(api.keys.queue("default").job(job_id), mapping={"state": "garbage", "attempts": "x"})
    status, reply = api.call("POST", "/api/jobs/retry", f'{{"ids": ["{job_id}"]}}')
    assert status == 200 and reply == {"matched": 1, "moved": 0, "more": False}
    status, reply = api.call("POST", "/api/jobs/cancel", f'{{"ids": ["{job_id}"]}}')
    assert status == 200 and reply["moved"] == 0
    status, reply = api.call("POST", "/api/jobs/retry", '{"state": "cancelled"}')
    assert status == 200
    assert api.redis.hget(api.keys.queue("default").job(job_id), "state") == "garbage"
