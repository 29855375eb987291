"""What every `bagbot` command shares: the consoles, the common options, and one way to run an
action on a client so that every known error ends as its exit code (see `ExitCode`)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.text import Text

from backend.config import ConfigError, Settings
from backend.ops.client import Client, ExitCode, OpsError
from backend.ops.http_client import HttpClient
from backend.ops.store_client import StoreClient, map_store_error

T = TypeVar("T")


def _hide_flag_types() -> None:
    """Typer's help shows a type for every option, so on/off flags read as taking a value
    (`--wait <bool>`, `--help <bool>`): a flag takes none, so show none."""
    shown = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

# piped output is not cut to 80 columns: ids and errors stay whole for grep and logs
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="BAGBOT_URL", help="Base URL of a backend to talk to over HTTP instead of the store."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BAGBOT_API_TOKEN",
        show_envvar=True,
        help="Bearer token for --url.",
        show_default=False,
    ),
]
QueueOpt = Annotated[
    str | None, typer.Option("--queue", "-q", help="Queue name (default: search every queue).")
]


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print `error: message` on stderr; the caller raises the returned Exit with `code`."""
    err.print(Text("error: ", style="bold red") + Text(message))
    return typer.Exit(int(code))


def load_settings() -> Settings:
    """The environment's settings; a bad value is a usage error (exit 2), not a traceback."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def open_client(url: str | None, token: str | None, allow_memory: bool = False) -> Client:
    """The backend at `url` over HTTP, else the store the settings name. A memory store is
    refused unless the caller runs a worker itself: its jobs live in another process."""
    if url:
        return HttpClient(url, token)
    from backend.workers.stores import create_job_store, private_to_one_process

    settings = load_settings()
    if private_to_one_process(settings) and not allow_memory:
        raise OpsError(
            "JOB_STORE=memory keeps jobs inside the backend process, out of this command's reach: "
            "pass --url http://HOST:PORT of the backend, or set JOB_STORE=redis and REDIS_URL",
            ExitCode.USAGE,
        )
    return StoreClient(create_job_store(settings), settings.safe_redis_url)


def run(url: str | None, token: str | None, action: Callable[[Client], Awaitable[T]]) -> T:
    """Open a client, run `action`, close it; turn every known error into its exit code."""

    async def main() -> T:
        client = open_client(url, token)
        try:
            return await action(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except OpsError as exc:
        raise fail(str(exc), exc.code) from None
    except Exception as exc:
        mapped = map_store_error(exc, url or "the job store")
        if mapped is None:
            raise
        raise fail(str(mapped), mapped.code) from None


def print_json(data: Any) -> None:
    """`--json` output: indented, and whatever JSON cannot hold (datetimes) as its str."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
