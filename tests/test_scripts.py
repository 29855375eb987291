"""The Lua/Python boundary itself (backend/workers/redis/scripts.py and lua/*.lua).

Read from the files: each script's header lists exactly the keys its description passes, the body
(and the lib.lua helpers it calls) reads no other key, every ARGV it reads is in its header and
its records unpack the fields of their Python record. Run: the Lua constants are rules.py's, the
reply codes raise the contract's errors, and a store whose Redis is gone raises only the
contract's StoreUnavailableError, whatever is asked.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import fakeredis
import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from backend.workers.job_store import (
    IllegalTransitionError,
    JobNotFoundError,
    StoreUnavailableError,
    UniqueKeyHeldError,
)
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, Completion, JobError, JobSpec, ScheduleInfo, WorkerInfo
from backend.workers.redis import script_args as sa
from backend.workers.redis import scripts as sc
from backend.workers.redis.keys import QueueKeys, RedisKeys
from backend.workers.redis_job_store import RedisJobStore
from backend.workers.rules import DURATION_BUCKETS, MAX_PRIORITY, PRIORITY_SPAN, Backoff

LUA = resources.files("backend.workers.redis").joinpath("lua")
SCRIPTS = list(sc.SCRIPTS.values())
IDS = [script.name for script in SCRIPTS]


def lua(name: str) -> str:
    return LUA.joinpath(f"{name}.lua").read_text()


def header(text: str) -> str:
    """The leading comment lines of a script."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def lib_functions() -> dict[str, str]:
    functions: dict[str, str] = {}
    current = None
    for line in body(lua("lib")).splitlines():
        found = re.match(r"local function (\w+)\(", line)
        if found:
            current = found.group(1)
            functions[current] = ""
        elif current:
            functions[current] += line + "\n"
    return functions


def keys_read(text: str) -> set[str]:
    """Every K.<name> the text reads, with those of the lib.lua helpers it calls (transitively)."""
    functions = lib_functions()
    names, todo, seen = set(re.findall(r"\bK\.(\w+)", text)), [text], set()
    while todo:
        for call in re.findall(r"\b(\w+)\(", todo.pop()):
            if call in functions and call not in seen:
                seen.add(call)
                names |= set(re.findall(r"\bK\.(\w+)", functions[call]))
                todo.append(functions[call])
    return names


def holder(script: sc.Script[Any, Any]) -> QueueKeys | RedisKeys:
    keys = RedisKeys("bbtest")
    return keys if script.registry else keys.queue("some-queue.1")


def test_every_lua_file_has_a_description() -> None:
    files = {entry.name.removesuffix(".lua") for entry in LUA.iterdir() if entry.name.endswith(".lua")}
    assert files - {"lib"} == set(sc.SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_keys_are_named_fields_and_share_one_hash_slot(script: sc.Script[Any, Any]) -> None:
    keys = holder(script)
    if script.registry:
        assert all(hasattr(keys, name) for name in script.keys)
    else:
        assert set(script.keys) <= set(QueueKeys.__dataclass_fields__)
    assert len(set(script.keys)) == len(script.keys)
    values = script.key_values(keys)
    tag = "{workers}" if script.registry else "{some-queue.1}"
    assert all(tag in value for value in values)
    assert len({key_slot(value.encode()) for value in values}) == 1


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_header_lists_the_described_keys_in_order(script: sc.Script[Any, Any]) -> None:
    listed = re.findall(r"KEYS\[(\d+)\] (\w+)", header(lua(script.name)))
    assert [(int(i), name) for i, name in listed] == list(enumerate(script.keys, 1))
    assert f"scripts.{script.name.upper()}" in header(lua(script.name))


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_script_reads_exactly_its_own_keys(script: sc.Script[Any, Any]) -> None:
    text = body(lua(script.name))
    assert "KEYS[" not in text  # keys are read by name (K.<name>), never by position
    assert keys_read(text) == set(script.keys)


def test_lib_reads_keys_by_name_only() -> None:
    assert "KEYS[" not in body(lua("lib"))


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_header_lists_every_argv_the_script_reads(script: sc.Script[Any, Any]) -> None:
    text = lua(script.name)
    listed = [int(i) for i in re.findall(r"ARGV\[(\d+)\]", header(text))]
    scalars = [name for name in script.args._fields if name != "items"]
    count = len(scalars) + (1 if "items" in script.args._fields else 0)
    assert listed == list(range(1, count + 1))
    assert {int(i) for i in re.findall(r"ARGV\[(\d+)\]", body(text))} <= set(listed)
    if script.item is None:
        assert "items" not in script.args._fields and "WIDTH" not in body(text)
        return
    assert f"ARGV[{count + 1}..] n records of WIDTH fields (scripts.{script.item.__name__})" in header(text)
    unpacked = re.search(r"local ([\w,\s]+?) = unpack\(ARGV, b, b \+ WIDTH - 1\)", body(text))
    if script is sc.HEARTBEAT:  # field, value pairs go to HSET as they are
        assert "unpack(ARGV, 4, 3 + n * WIDTH)" in body(text)
        return
    assert unpacked is not None
    assert [name.strip() for name in unpacked.group(1).split(",")] == list(script.item._fields)


def test_to_argv_sends_scalars_then_the_count_then_each_record() -> None:
    items = [sa.ClaimRef("a", "t1"), sa.ClaimRef("b", "t2")]
    assert sa.to_argv(sa.ExtendArgs(5_000_000, items)) == [5_000_000, 2, "a", "t1", "b", "t2"]
    assert sa.to_argv(sa.ReleaseArgs([])) == [0]
    assert sa.to_argv(sa.PurgeArgs(10, 20, "done")) == [10, 20, "done"]
    assert sa.to_argv(sa.NoArgs()) == []


def test_records_build_the_wire_values() -> None:
    item = sa.EnqueueItem.from_spec(JobSpec("bagbot.noop", id="j1", priority=3, delay=1.5, events=True))
    assert (item.id, item.args, item.kwargs) == ("j1", b"", b"")  # defaults are not sent, nor stored
    assert orjson.loads(item.opts) == {"priority": "3", "delay": "1500000", "ev": "1"}
    plain = sa.EnqueueItem.from_spec(JobSpec("bagbot.noop", args=[1], kwargs={"a": None}))
    assert (len(plain.id), plain.args, plain.kwargs, plain.opts) == (32, b"[1]", b'{"a":null}', b"")
    claim = Claim("default", "j1", "tok")
    assert sa.FinishItem.from_completion(Completion(claim, 0.5, result={"x": 1})).payload == b'{"x":1}'
    cancelled = sa.FinishItem.from_completion(Completion(claim, 0.5, cancelled=True))
    assert (cancelled.ok, cancelled.payload, cancelled.policy) == (2, b"", "")
    failed = sa.FinishItem.from_completion(Completion(claim, 0.5, error=JobError("E", "x"), retryable=False,
                                                      max_attempts=2, backoff=Backoff(1, 8, 0)))
    assert (failed.ok, failed.policy) == (0, "0 -1 2 1.0 8.0 0.0")
    default = sa.FinishItem.from_completion(Completion(claim, 0.5, error=JobError("E", "x"), retry_delay=2))
    assert default.policy == "1 2000000 -1 - - -"


async def test_lua_constants_come_from_rules() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    check = ("local out = {string.format('%d', PRIORITY_SPAN), string.format('%d', MAX_PRIORITY)}\n"
             "for _, bound in ipairs(BUCKETS) do out[#out + 1] = string.format('%.17g', bound) end\n"
             "return out")
    for script in SCRIPTS:
        reply = await client.eval(sc.prelude(script) + check, 0)
        assert int(reply[0]) == PRIORITY_SPAN == 2**40
        assert int(reply[1]) == MAX_PRIORITY
        assert tuple(float(bound) for bound in reply[2:]) == DURATION_BUCKETS
    await client.aclose()


def test_no_hand_written_copies_of_the_shared_constants() -> None:
    for name in [*sc.SCRIPTS, "lib"]:
        text = body(lua(name))
        for constant in ("BUCKETS", "PRIORITY_SPAN", "MAX_PRIORITY", "CODE", "WIDTH", "K"):
            assert not re.search(rf"local {constant}\b", text), (name, constant)
        assert "1099511627776" not in text and "0.005" not in text and "1000 -" not in text


def test_reply_codes_are_named_and_each_error_maps_to_its_exception() -> None:
    sources = "\n".join(body(lua(name)) for name in [*sc.SCRIPTS, "lib"])
    for code in sc.Code:
        assert f"CODE.{code.name}" in sources, code  # every code is used, by name
    assert not re.search(r"'(missing|illegal|ok|stale|not_found)'", sources)  # no bare literals
    assert set(sc.ERRORS) == {sc.Code.NOT_FOUND, sc.Code.ILLEGAL, sc.Code.CONFLICT}
    missing = sc.ERRORS[sc.Code.NOT_FOUND]("j1", "", "cancel")
    assert isinstance(missing, JobNotFoundError)
    illegal = sc.ERRORS[sc.Code.ILLEGAL]("j1", "done", "cancel")
    assert isinstance(illegal, IllegalTransitionError)
    assert (illegal.job_id, illegal.state, illegal.action) == ("j1", "done", "cancel")
    held = sc.ERRORS[sc.Code.CONFLICT]("j1", "j2", "retry")
    assert isinstance(held, UniqueKeyHeldError) and isinstance(held, IllegalTransitionError)
    assert held.holder == "j2" and "j2" in str(held)


async def test_reply_codes_through_the_store() -> None:
    store = MemoryJobStore()
    with pytest.raises(JobNotFoundError):
        await store._call(sc.CANCEL, store.keys.queue("default"), sa.JobArgs("nope"))
    job = await store.enqueue(JobSpec("bagbot.noop"))
    with pytest.raises(IllegalTransitionError) as raised:
        await store.retry(job.id)
    assert (raised.value.job_id, raised.value.state, raised.value.action) == (job.id, "enqueued", "retry")
    stale = Completion(Claim("default", job.id, "not-the-token"), 0.1)
    assert await store.finish([stale]) == [None]  # Code.STALE: nothing changed
    await store.close()


def test_the_store_keeps_its_registered_scripts_by_name() -> None:
    store = MemoryJobStore()
    for name, script in sc.SCRIPTS.items():
        assert store._scripts[name].script == script.source
        assert store._scripts[name].sha
    assert sc.prelude(sc.FINISH) in sc.FINISH.source and "local function leave_running" in sc.FINISH.source
    assert "local function" not in sc.HEARTBEAT.source  # registry scripts get no lib.lua


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_gone_redis_raises_only_store_unavailable() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), decode_responses=True,
                            socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    store = RedisJobStore(client, prefix="bbtest", url="redis://127.0.0.1/0")
    claim = Claim("default", "j1", "tok")
    worker = WorkerInfo("w1")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "enqueue": lambda: store.enqueue(JobSpec("bagbot.noop")),
        "enqueue_many": lambda: store.enqueue_many([JobSpec("bagbot.noop")]),
        "get": lambda: store.get("j1", "default"),
        "get_any_queue": lambda: store.get("j1"),
        "list_jobs": lambda: store.list_jobs("default"),
        "counts": store.counts,
        "queues": store.queues,
        "claim": lambda: store.claim("w1", ["default"], 1, 30),
        "wait_for_jobs": lambda: store.wait_for_jobs(["default"], 0.1),
        "next_wakeup": lambda: store.next_wakeup(["default"]),
        "finish": lambda: store.finish([Completion(claim, 0.1)]),
        "extend": lambda: store.extend([claim], 30),
        "confirm": lambda: store.confirm([claim], 30),
        "progress": lambda: store.progress(claim, 0.5),
        "server_time": store.server_time,
        "set_handler_limits": lambda: store.set_handler_limits("default", {"x": 1}),
        "register_schedules": lambda: store.register_schedules([ScheduleInfo("s", "h", "q", "* * * * *")]),
        "list_schedules": store.list_schedules,
        "job_events": lambda: anext(aiter(store.job_events(["default"]))),
        "release": lambda: store.release([claim]),
        "recover": lambda: store.recover(["default"]),
        "promote": lambda: store.promote(["default"]),
        "cancel": lambda: store.cancel("j1", "default"),
        "retry": lambda: store.retry("j1", "default"),
        "purge": lambda: store.purge(60, ["default"]),
        "register_worker": lambda: store.register_worker(worker),
        "heartbeat": lambda: store.heartbeat(worker, [claim], 30),
        "deregister_worker": lambda: store.deregister_worker("w1"),
        "list_workers": store.list_workers,
        "metrics": store.metrics,
    }
    watch = store.reset_watch()
    assert watch is not None
    calls["reset_watch"] = watch.check
    for name, call in calls.items():
        with pytest.raises(StoreUnavailableError):
            await call()
        assert name  # (the failing call's name is in the traceback)
    assert not (await store.health()).ok
    await store.close()
