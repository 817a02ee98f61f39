"""What the commands of the `torpor` CLI share: the Typer apps, the client, output helpers,
the spec flags and the wait with progress."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from torpor.sdk import Client, Deployment, DeploymentFailedError, TorporError
from torpor.sdk._ops import DEFAULT_URL


class _Group(TyperGroup):
    """Accepts the global --url/--api-key after the command too: `torpor ls --url U`."""

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


_GLOBALS = ("--url", "--api-key")

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
        str, typer.Option(envvar="TORPOR_URL", help="torpor server URL (also after the command).")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TORPOR_API_KEY",
            help="API key (default: <data_dir>/admin.key).",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = {"url": url, "api_key": api_key}


def _fail(message: str) -> typer.Exit:
    err_console.print(
        f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(1)


@contextmanager
def _api(ctx: typer.Context) -> Iterator[Client]:
    """A client for the chosen server (key: --api-key, TORPOR_API_KEY, else this machine's
    admin key); a TorporError inside the block exits with status 1."""
    obj: dict[str, Any] = ctx.find_root().obj or {}
    client = Client(obj.get("url") or DEFAULT_URL, obj.get("api_key"))
    try:
        yield client
    except TorporError as exc:
        raise _fail(exc.message) from None
    finally:
        client.close()


def _t(value: Any) -> Text:
    """Plain text for a table cell: never interpreted as rich markup."""
    return Text("-" if value is None or value == "" else str(value))


def _table(columns: tuple[str, ...], rows: list[list[Any]], empty: str, wrap: str = "") -> None:
    """Print a borderless table (cells as plain text), or `empty` when there are no rows."""
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column != wrap)
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
ConcOpt = Annotated[int | None, typer.Option("--concurrency", min=1, help="Requests per worker.")]
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
