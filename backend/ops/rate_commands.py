"""`bagbot queues rate QUEUE [RATE] [--clear]`: show, set or clear a queue's rate limit.

The rate is checked here (the same parser as the API's and the store's), so a typo is a usage
error before anything is sent. Registered on the queues group by importing this module (cli.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from backend.ops.bulk_commands import QueueArg, queues_app
from backend.ops.cli_support import JsonOpt, TokenOpt, UrlOpt, fail, out, print_json, run
from backend.ops.client import ExitCode
from backend.workers.rates import InvalidRateError, canonical_rate, parse_rate

RateArg = Annotated[str | None, typer.Argument(metavar="[RATE]", help="e.g. 100/s, 600/m, 10/30s")]
ClearOpt = Annotated[bool, typer.Option("--clear", help="Remove the queue's rate limit.")]


@queues_app.command("rate")
def queues_rate(ctx: typer.Context, queue: QueueArg, rate: RateArg = None, clear: ClearOpt = False,
                json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show, set or clear (--clear) a queue's rate limit: at most N job starts per period across
    every worker, spaced evenly on the Redis clock; jobs over it wait as `scheduled`, no attempt used."""
    if rate is not None and clear:
        raise fail("give a RATE or --clear, not both", ExitCode.USAGE)
    checked = None
    if rate is not None:
        try:
            checked = canonical_rate(rate)
        except InvalidRateError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None
    given = ctx.obj if isinstance(ctx.obj, dict) else {}  # `bagbot queues --url X rate Q` works too
    url, token = url or given.get("url"), token or given.get("token")
    if rate is None and not clear:
        current = run(url, token, lambda c: c.rates()).get(queue)
        if json_out:
            print_json({"queue": queue, "rate": current})
        else:
            out.print(f"queue {queue}: {_describe(current)}")
        return
    reply = run(url, token, lambda c: c.set_rate(queue, checked))
    if json_out:
        print_json(reply)
    elif checked is None:
        out.print(f"queue {queue}: rate limit cleared")
    else:
        out.print(f"queue {queue}: {_describe(checked)}")


def _describe(rate: str | None) -> str:
    if rate is None:
        return "no rate limit"
    parsed = parse_rate(rate)
    return f"at most {rate} (one start every {parsed.interval_us / 1e6:g} s, across all workers)"
