"""What the commands of the `torpor` CLI share: the Typer apps, the client, output helpers,
the spec flags and the wait with progress."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from torpor.sdk import (
    APIConnectionError,
    AuthenticationError,
    Client,
    Deployment,
    DeploymentFailedError,
    PermissionDeniedError,
    TorporError,
)
from torpor.sdk._ops import DEFAULT_URL


class _Group(TyperGroup):
    """Accepts the global --url/--api-key/--data-dir after the command too:
    `torpor ls --url U`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _hoist_globals(args)
        return super().parse_args(ctx, args)


def _hoist_globals(args: list[str]) -> list[str]:
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        after_arg = bool(rest) and rest[-1] == "--arg"  # `--arg --url` is an engine argument
        if arg in _GLOBALS and i + 1 < len(args) and not after_arg:
            front += args[i : i + 2]
            i += 2
            continue
        if arg.split("=", 1)[0] in _GLOBALS and not after_arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


_GLOBALS = ("--url", "--api-key", "--data-dir")

app = typer.Typer(
    name="torpor",
    cls=_Group,
    help="Self-hosted serverless inference: OpenAI-compatible endpoints that scale to zero.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
apps_app = typer.Typer(help="Apps of functions: list and delete.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Option(
            envvar="TORPOR_URL",
            help="torpor server URL (any global option may follow the command).",
        ),
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TORPOR_API_KEY",
            help="API key (default: TORPOR_ADMIN_KEY, else <data dir>/admin.key).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="TORPOR_DATA_DIR",
            help="Data directory: `serve` keeps its state there; other commands read its "
            "admin.key when no key is given (default: ~/.torpor).",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Target.resolve(ctx, url, api_key, data_dir)


@dataclass(frozen=True)
class Target:
    """The server the CLI talks to, the key it sends, and where each came from (errors name
    them, so a wrong URL or a stale key is found at once)."""

    url: str
    url_source: str
    api_key: str | None
    key_source: str
    data_dir: Path | None

    @classmethod
    def resolve(
        cls, ctx: typer.Context, url: str, api_key: str | None, data_dir: Path | None
    ) -> Target:
        url_source = _source(ctx, "url", "--url", "TORPOR_URL", "the default")
        key, key_source = api_key, _source(ctx, "api_key", "--api-key", "TORPOR_API_KEY", "")
        if not key:
            key, key_source = local_key(data_dir)
        return cls(url.rstrip("/") or DEFAULT_URL, url_source, key, key_source, data_dir)

    def where(self) -> str:
        return f"server {self.url} (from {self.url_source}), key from {self.key_source}"


def _source(ctx: typer.Context, param: str, flag: str, env: str, default: str) -> str:
    source = getattr(ctx.get_parameter_source(param), "name", "")
    return {"COMMANDLINE": flag, "ENVIRONMENT": env}.get(source, default)


def local_key(data_dir: Path | None) -> tuple[str | None, str]:
    """The admin key of a server on this machine: TORPOR_ADMIN_KEY (unless a data dir was
    named), else <data dir>/admin.key; with where it was found, or where it was looked for."""
    env_key = os.environ.get("TORPOR_ADMIN_KEY", "").strip()
    if env_key and data_dir is None:
        return env_key, "TORPOR_ADMIN_KEY"
    directory = (data_dir or Path("~/.torpor")).expanduser()
    path = directory / "admin.key"
    try:
        key = path.read_text().strip()
    except OSError:
        return None, f"nowhere (no key given and no {path})"
    return (key or None), str(path) if key else f"nowhere ({path} is empty)"


KEY_HINT = (
    "give a key with --api-key KEY or TORPOR_API_KEY=KEY, or --data-dir DIR to use the "
    "admin key of the server that keeps its data in DIR"
)


def _fail(message: str) -> typer.Exit:
    err_console.print(
        f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(1)


def target(ctx: typer.Context) -> Target:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Target) else Target(DEFAULT_URL, "the default", None, "", None)


def require_key(where: Target) -> str:
    """The key to send; without one, exit 1 naming where it was looked for."""
    if where.api_key is None:
        raise _fail(f"no API key for {where.url}: found {where.key_source}; {KEY_HINT}")
    return where.api_key


def explain(error: TorporError, where: Target) -> str:
    """The error's message, plus which server and key were used where that is the likely
    cause (a wrong URL, a missing or stale key, a key without the right)."""
    if isinstance(error, APIConnectionError):
        return f"{error.message} (URL from {where.url_source}; set --url or TORPOR_URL)"
    if isinstance(error, AuthenticationError):
        return f"{error.message}: {where.where()}; {KEY_HINT}"
    if isinstance(error, PermissionDeniedError):
        return f"{error.message} ({where.where()})"
    return error.message


@contextmanager
def _api(ctx: typer.Context) -> Iterator[Client]:
    """A client for the chosen server and key (see Target); a TorporError inside the block
    exits with status 1 and a message that names the server and the key's source."""
    where = target(ctx)
    client = Client(where.url, require_key(where))
    try:
        yield client
    except TorporError as exc:
        raise _fail(explain(exc, where)) from None
    finally:
        client.close()


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table, or json (full values, for scripts).")
]


def money(value: float | None) -> str:
    """Dollars with cents; amounts under a cent with two significant digits."""
    amount = float(value or 0)
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.2g}" if abs(amount) >= 1e-4 else "<$0.0001"


def _json_out(items: Any) -> None:
    print(json.dumps(items, indent=2, default=str))


def _t(value: Any) -> Text:
    """Plain text for a table cell: never interpreted as rich markup."""
    return Text("-" if value is None or value == "" else str(value))


# Columns whose values are copied into other commands: never shortened.
WHOLE = frozenset({"ID", "NAME", "DEPLOYMENT", "WORKER"})


def _table(columns: tuple[str, ...], rows: list[list[Any]], empty: str, wrap: str = "") -> None:
    """Print a borderless table (cells as plain text), or `empty` when there are no rows.
    Id and name columns keep their full width; the others wrap or shorten."""
    table = Table(box=None, header_style="bold")
    for i, column in enumerate(columns):
        if column in WHOLE:
            width = max([len(column), *(len(str(_t(row[i]))) for row in rows)])
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column, no_wrap=column != wrap, overflow="fold")
    for row in rows:
        table.add_row(*(_t(cell) for cell in row))
    console.print(table if rows else Text(empty))


def _ago(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 0:
        return iso
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(value: Any, width: int = 40) -> str:
    text = str(value or "")
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _endpoint(client: Client, deployment: Deployment) -> str:
    path = deployment.endpoint or f"/openai/{deployment.name}/v1"
    return f"{client.url}{path}"


# -- spec flags -------------------------------------------------------------------------------

NameArg = Annotated[str, typer.Argument(help="Deployment name.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model path, URL or repo.")]
FrameworkOpt = Annotated[
    str | None,
    typer.Option("--framework", help="llama.cpp, vllm, sglang, ollama, embed or custom."),
]
MinOpt = Annotated[int | None, typer.Option("--min-workers", min=0, help="Workers kept warm.")]
MaxOpt = Annotated[int | None, typer.Option("--max-workers", min=1, help="Worker ceiling.")]
ConcOpt = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        min=1,
        help="Requests per worker (default: the engine's; 1 for llama.cpp, which serves one "
        "request at a time).",
        show_default=False,
    ),
]
IdleOpt = Annotated[float | None, typer.Option("--idle-timeout", min=0, help="Idle secs to stop.")]
WaitTimeOpt = Annotated[float | None, typer.Option("--wait-time", help="Max secs a request waits.")]
QueueOpt = Annotated[int | None, typer.Option("--max-queue", min=0, help="Queued requests cap.")]
GpusOpt = Annotated[int | None, typer.Option("--gpus", min=0, help="GPUs per worker.")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="Worker env KEY=VALUE (repeat).")]
ArgOpt = Annotated[list[str] | None, typer.Option("--arg", help="Engine argument (repeat).")]
OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Engine option KEY=VALUE; VALUE may be JSON.")
]
DescOpt = Annotated[str | None, typer.Option("--description", help="Free-text description.")]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", exists=True, dir_okay=False, help="Spec file (JSON or YAML)."),
]


def _pairs(values: list[str] | None, flag: str, parse_json: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        value: Any = raw
        if parse_json:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        result[key] = value
    return result


def _load_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            yaml = importlib.import_module("yaml")
        except ImportError:
            raise _fail("reading YAML spec files needs PyYAML; use a JSON file instead") from None
        try:
            data = yaml.safe_load(text)
        except Exception as exc:
            raise _fail(f"{path}: invalid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _fail(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(f"{path}: the spec must be an object")
    return data


def _spec(file: Path | None, **flags: Any) -> dict[str, Any]:
    """Fields from the file, overridden by the flags the user gave (env/options are merged)."""
    spec = _load_file(file) if file else {}
    env, options = flags.pop("env"), flags.pop("options")
    spec.update({key: value for key, value in flags.items() if value is not None})
    if env:
        spec["env"] = {**(spec.get("env") or {}), **_pairs(env, "--env")}
    if options:
        spec["options"] = {**(spec.get("options") or {}), **_pairs(options, "--option", True)}
    return spec


def _wait(client: Client, name: str) -> None:
    """Poll until setup is running or failed, with a progress bar while the model downloads,
    then print the outcome."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(f"waiting for {name}…", total=None)

        def progress(dep: Deployment) -> None:
            download = dep.download or {}
            bar.update(
                task,
                description=f"{name}: {dep.state} ({dep.status})",
                total=download.get("bytes_total"),
                completed=download.get("bytes_done") or 0,
            )

        try:
            dep = client.wait_until_ready(name, timeout=float("inf"), on_progress=progress)
        except DeploymentFailedError:
            dep = client.get_deployment(name)
    size = (dep.storage or {}).get("model_bytes")
    if dep.download and size:
        console.print(Text(f"model: {dep.download.get('source')} ({size / 1e6:.1f} MB stored)"))
    console.print(Text.assemble(f"{name}: ", (str(dep.state), "bold"), f" ({dep.status})"))
    if dep.state == "failed":
        for line in (dep.last_error or {}).get("log_tail") or []:
            err_console.print(Text(f"  {line}"))
        raise _fail(dep.reason or f"deployment {name} failed")
    console.print(Text(f"endpoint: {_endpoint(client, dep)}"))


# -- commands ---------------------------------------------------------------------------------
