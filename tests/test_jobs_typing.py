"""mypy checks a job's arguments against its handler: wrong types and unknown keywords are
rejected, the right call is accepted, and the result has the handler's return type.

Runs mypy (strict) on a snippet that imports only `backend.jobs`; every line marked `# E`
must be reported, and no other line.
"""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

SNIPPET = '''
from backend.jobs import Client, JobHandle, task


@task("typing.send")
async def send_email(to: str, *, subject: str = "", retries: int = 0) -> bool:
    return True


@task("typing.count")
def count(words: list[str]) -> int:
    return len(words)


async def main(client: Client) -> None:
    ok: JobHandle[bool] = await send_email.enqueue("a@b.c", subject="hi")
    sent: bool = await ok.result(timeout=5)
    n: int = await (await client.enqueue(count, ["a", "b"])).result()
    await send_email.with_options(queue="mail", priority=3).enqueue("a@b.c")
    direct: int = count(["x"])
    await send_email.enqueue(42)  # E: wrong type of a positional argument
    await send_email.enqueue("a@b.c", subjekt="hi")  # E: unknown keyword
    await send_email.enqueue("a@b.c", retries="3")  # E: wrong keyword type
    await client.enqueue(count, "not a list")  # E: wrong type on an explicit client
    await count.enqueue()  # E: missing argument
    await send_email.with_options(queu="mail").enqueue("a@b.c")  # E: unknown job option
    wrong: str = await ok.result()  # E: the result is a bool
    also_wrong: str = count(["x"])  # E: calling the task is calling the function
    last: JobHandle[int] = await client.chain(send_email.call("a@b.c"), count.call(["a"]))
    batch = await client.batch([count.call(["a"]), count.call(["b"])], callback=send_email.call("x"))
    totals: dict[str, int] = await batch.results()
    await client.batch([count.call("not a list")])  # E: a call is checked like enqueue
    bad_last: JobHandle[bool] = await client.chain(send_email.call("a"), count.call([]))  # E: last is int
    print(sent, n, direct, wrong, also_wrong, last, totals, bad_last)
'''


def test_mypy_checks_job_arguments_against_the_handler(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    stdout, stderr, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
         "--hide-error-context", str(path)]
    )
    reported = sorted({int(m.group(1)) for m in re.finditer(r"snippet\.py:(\d+): error", stdout)})
    expected = [n for n, line in enumerate(SNIPPET.splitlines(), 1) if "# E" in line]
    assert len(expected) == 10
    assert reported == expected, f"mypy said:\n{stdout}{stderr}"
    assert status == 1
