"""The `torpor` command: run the server, and manage deployments and API keys over the REST API."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from torpor.client import ApiError, TorporClient

DEFAULT_URL = "http://127.0.0.1:8000"


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


def _local_admin_key() -> str | None:
    """The bootstrap admin key of a server on this machine, when one can be found."""
    try:
        from torpor.settings import Settings

        settings = Settings()
    except Exception:
        return None
    if settings.admin_key:
        return settings.admin_key
    try:
        return (settings.data_dir / "admin.key").read_text().strip() or None
    except OSError:
        return None


def _fail(message: str) -> typer.Exit:
    err_console.print(
        f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(1)


@contextmanager
def _api(ctx: typer.Context) -> Iterator[TorporClient]:
    """A client for the chosen server; an ApiError inside the block exits with status 1."""
    obj: dict[str, Any] = ctx.find_root().obj or {}
    client = TorporClient(obj.get("url") or DEFAULT_URL, obj.get("api_key") or _local_admin_key())
    try:
        yield client
    except ApiError as exc:
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


def _endpoint(client: TorporClient, deployment: dict[str, Any]) -> str:
    path = deployment.get("endpoint") or f"/openai/{deployment.get('name')}/v1"
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


def _wait(client: TorporClient, name: str) -> None:
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
        while True:
            dep = client.get_deployment(name)
            if dep.get("state") in ("running", "failed"):
                break
            download = dep.get("download") or {}
            bar.update(
                task,
                description=f"{name}: {dep.get('state')} ({dep.get('status')})",
                total=download.get("bytes_total"),
                completed=download.get("bytes_done") or 0,
            )
            time.sleep(0.5)
    size = (dep.get("storage") or {}).get("model_bytes")
    if dep.get("download") and size:
        console.print(Text(f"model: {dep['download'].get('source')} ({size / 1e6:.1f} MB stored)"))
    console.print(
        Text.assemble(f"{name}: ", (str(dep.get("state")), "bold"), f" ({dep.get('status')})")
    )
    if dep.get("state") == "failed":
        for line in (dep.get("last_error") or {}).get("log_tail") or []:
            err_console.print(Text(f"  {line}"))
        raise _fail(dep.get("reason") or f"deployment {name} failed")
    console.print(Text(f"endpoint: {_endpoint(client, dep)}"))


# -- commands ---------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port.", show_default=False)] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory.", show_default=False)
    ] = None,
) -> None:
    """Run the torpor server (blocks)."""
    from torpor.server import serve as run_server
    from torpor.settings import Settings

    overrides: dict[str, Any] = {"host": host, "port": port, "data_dir": data_dir}
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValueError as exc:  # pydantic's ValidationError
        raise _fail(f"invalid settings: {exc}") from None
    run_server(settings)


@app.command()
def deploy(
    ctx: typer.Context,
    name: NameArg,
    model: ModelOpt = None,
    framework: FrameworkOpt = None,
    min_workers: MinOpt = None,
    max_workers: MaxOpt = None,
    concurrency: ConcOpt = None,
    idle_timeout: IdleOpt = None,
    wait_time: WaitTimeOpt = None,
    max_queue: QueueOpt = None,
    gpus: GpusOpt = None,
    env: EnvOpt = None,
    arg: ArgOpt = None,
    option: OptionOpt = None,
    description: DescOpt = None,
    file: FileOpt = None,
    update: Annotated[
        bool, typer.Option("--update", help="If NAME exists, update it with the given fields.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it runs.")] = False,
) -> None:
    """Create a deployment (from flags and/or a spec file)."""
    spec = _spec(
        file, model=model, framework=framework, min_workers=min_workers,
        max_workers=max_workers, concurrency=concurrency, idle_timeout_s=idle_timeout,
        wait_time_s=wait_time, max_queue=max_queue, gpus=gpus, framework_args=arg or None,
        description=description, env=env, options=option,
    )  # fmt: skip
    spec["name"] = name
    with _api(ctx) as client:
        # With --update, an existing deployment takes only the given fields (a partial spec
        # would not validate as a whole new deployment).
        if update and _exists(client, name):
            dep = client.update_deployment(name, {k: v for k, v in spec.items() if k != "name"})
            verb = "updated"
        else:
            try:
                dep = client.create_deployment(spec)
                verb = "created"
            except ApiError as exc:
                if exc.status != 409:
                    raise
                raise _fail(
                    f"deployment {name} already exists: use `torpor update {name} ...` "
                    "or `torpor deploy --update`"
                ) from None
        console.print(Text(f"{verb} deployment {name} ({dep.get('state')})"))
        if wait:
            _wait(client, name)
        else:
            console.print(Text(f"endpoint: {_endpoint(client, dep)}"))


def _exists(client: TorporClient, name: str) -> bool:
    try:
        client.get_deployment(name)
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


@app.command()
def update(
    ctx: typer.Context,
    name: NameArg,
    model: ModelOpt = None,
    framework: FrameworkOpt = None,
    min_workers: MinOpt = None,
    max_workers: MaxOpt = None,
    concurrency: ConcOpt = None,
    idle_timeout: IdleOpt = None,
    wait_time: WaitTimeOpt = None,
    max_queue: QueueOpt = None,
    gpus: GpusOpt = None,
    env: EnvOpt = None,
    arg: ArgOpt = None,
    option: OptionOpt = None,
    description: DescOpt = None,
    file: FileOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it runs.")] = False,
) -> None:
    """Change some fields of a deployment; fields not given are kept."""
    changes = _spec(
        file, model=model, framework=framework, min_workers=min_workers,
        max_workers=max_workers, concurrency=concurrency, idle_timeout_s=idle_timeout,
        wait_time_s=wait_time, max_queue=max_queue, gpus=gpus, framework_args=arg or None,
        description=description, env=env, options=option,
    )  # fmt: skip
    changes.pop("name", None)
    if not changes:
        raise _fail("nothing to change: give at least one field flag or --file")
    with _api(ctx) as client:
        dep = client.update_deployment(name, changes)
        console.print(Text(f"updated deployment {name} ({dep.get('state')}, {dep.get('status')})"))
        if wait:
            _wait(client, name)


@app.command("ls")
def list_deployments(ctx: typer.Context) -> None:
    """List deployments."""
    with _api(ctx) as client:
        deployments = client.list_deployments()
    rows = [
        [d.get("name"), d.get("framework"), _short(d.get("model")), d.get("state"),
         d.get("status"), f"{d.get('ready_workers', 0)}/{d.get('desired_workers', 0)}",
         "{}/{}".format((d.get("queue") or {}).get("waiting", 0),
                        (d.get("queue") or {}).get("inflight", 0))]
        for d in deployments
    ]  # fmt: skip
    columns = ("NAME", "FRAMEWORK", "MODEL", "STATE", "STATUS", "WORKERS", "QUEUE")
    _table(columns, rows, "no deployments", wrap="MODEL")


@app.command()
def get(
    ctx: typer.Context,
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show one deployment and its workers."""
    with _api(ctx) as client:
        dep = client.get_deployment(name)
        endpoint = _endpoint(client, dep)
    if as_json:
        print(json.dumps(dep, indent=2))
        return
    queue = dep.get("queue") or {}
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows: list[tuple[str, Any]] = [
        ("description", dep.get("description")),
        ("framework", dep.get("framework")),
        ("model", dep.get("model")),
        ("state", dep.get("state")),
        ("status", dep.get("status")),
        ("reason", dep.get("reason")),
        ("endpoint", endpoint),
        ("workers", f"{dep.get('ready_workers', 0)} ready / {dep.get('desired_workers', 0)} desired"
                    f" (min {dep.get('min_workers')}, max {dep.get('max_workers')})"),
        ("queue", f"{queue.get('waiting', 0)} waiting, {queue.get('inflight', 0)} in flight"
                  f" (max {dep.get('max_queue')})"),
        ("concurrency", dep.get("concurrency")),
        ("timeouts", f"idle {dep.get('idle_timeout_s')}s, wait {dep.get('wait_time_s')}s"),
        ("gpus", dep.get("gpus")),
    ]  # fmt: skip
    if dep.get("framework_args"):
        rows.append(("args", " ".join(dep["framework_args"])))
    if dep.get("options"):
        rows.append(("options", json.dumps(dep["options"])))
    if dep.get("env"):
        rows.append(("env", ", ".join(f"{k}={v}" for k, v in dep["env"].items())))
    for label, value in rows:
        if value not in (None, ""):
            summary.add_row(label, _t(value))
    console.print(Panel(summary, title=Text(str(dep.get("name"))), title_align="left"))
    last_error = dep.get("last_error")
    if last_error:
        console.print(
            Text(f"last error: worker {last_error.get('worker')} exited with "
                 f"{last_error.get('exit_code')}", style="red")
        )  # fmt: skip
        for line in last_error.get("log_tail") or []:
            console.print(Text(f"  {line}"))
    worker_rows = [
        [w.get("id"), w.get("state"), _ago(w.get("started_at")), w.get("restarts", 0),
         w.get("reason")]
        for w in dep.get("workers") or []
    ]  # fmt: skip
    _table(
        ("ID", "STATE", "STARTED", "RESTARTS", "REASON"), worker_rows, "no workers", wrap="REASON"
    )


@app.command()
def logs(
    ctx: typer.Context,
    name: NameArg,
    worker: Annotated[str | None, typer.Option("--worker", help="Only this worker.")] = None,
    tail: Annotated[int, typer.Option("--tail", min=0, help="Lines of history.")] = 200,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines.")] = False,
) -> None:
    """Print worker logs."""
    try:
        with _api(ctx) as client:
            for line in client.logs(name, worker=worker, tail=tail, follow=follow):
                print(line, flush=True)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def events(
    ctx: typer.Context,
    name: NameArg,
) -> None:
    """Show a deployment's setup and worker events."""
    with _api(ctx) as client:
        items = client.events(name)
    rows = [[e.get("at"), e.get("kind"), e.get("state"), e.get("message")] for e in items]
    _table(("AT", "KIND", "STATE", "MESSAGE"), rows, "no events", wrap="MESSAGE")


@app.command()
def usage(
    ctx: typer.Context,
    window: Annotated[str, typer.Option(help="1h, 6h, 24h, 7d or 30d.")] = "24h",
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
) -> None:
    """Print usage and spend: the summary, then one row per deployment."""
    with _api(ctx) as client:
        total = client.usage_summary(window, deployment)
        rows = [] if deployment else client.usage_by_deployment(window)
    if deployment is None:
        rows = [*rows, {**total, "deployment": "TOTAL"}]
    else:
        rows = [{**total, "deployment": deployment}]
    _table(
        ("DEPLOYMENT", "REQUESTS", "PROMPT", "COMPLETION", "AVG LATENCY", "AVG TTFT", "COST"),
        [
            [
                r.get("deployment"),
                r.get("requests", 0),
                r.get("prompt_tokens", 0),
                r.get("completion_tokens", 0),
                f"{r.get('avg_latency_ms', 0):.1f} ms",
                f"{r.get('avg_ttft_ms', 0):.1f} ms",
                f"${r.get('cost', 0):.6f}",
            ]
            for r in rows
        ],
        "no usage",
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (bench/ in the source checkout): `torpor bench all --smoke`."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "bench" / "__main__.py").is_file():
        raise _fail("the benchmarks live in torpor's source checkout (bench/); run from there")
    os.chdir(repo)
    os.execv(sys.executable, [sys.executable, "-m", "bench", *ctx.args])


@app.command()
def rm(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a deployment and its workers."""
    if not yes:
        typer.confirm(f"Delete deployment {name}?", abort=True)
    with _api(ctx) as client:
        client.delete_deployment(name)
    console.print(Text(f"deleted deployment {name}"))


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A label for the key.")],
    deployment: Annotated[
        list[str] | None,
        typer.Option("--deployment", help="Limit the key to this deployment (repeatable)."),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="May manage deployments and keys.")
    ] = False,
) -> None:
    """Create an API key; the secret is printed once."""
    with _api(ctx) as client:
        key = client.create_key(name, deployments=deployment or None, admin=admin)
    scope = "admin" if key.get("admin") else ", ".join(key.get("deployments") or []) or "all"
    err_console.print(Text(f"created key {key.get('name')} (id {key.get('id')}, scope: {scope})"))
    # The secret alone on stdout, so `KEY=$(torpor keys create x)` works.
    print(key.get("key"))
    err_console.print(Text("Store this key now: it will not be shown again.", style="yellow"))


@keys_app.command("ls")
def keys_ls(ctx: typer.Context) -> None:
    """List API keys (secrets are never shown)."""
    with _api(ctx) as client:
        items = client.list_keys()
    rows = [
        [k.get("id"), k.get("name"), k.get("prefix"),
         "all" if k.get("deployments") is None else ", ".join(k["deployments"]),
         "yes" if k.get("admin") else "no", k.get("created_at"), k.get("revoked_at")]
        for k in items
    ]  # fmt: skip
    columns = ("ID", "NAME", "PREFIX", "DEPLOYMENTS", "ADMIN", "CREATED", "REVOKED")
    _table(columns, rows, "no keys", wrap="DEPLOYMENTS")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id.")],
) -> None:
    """Revoke an API key."""
    with _api(ctx) as client:
        client.revoke_key(key_id)
    console.print(Text(f"revoked key {key_id}"))


@app.command("gpus")
def list_gpus(ctx: typer.Context) -> None:
    """Accelerators: type, memory and the worker that holds each."""
    with _api(ctx) as client:
        devices = client._list("/api/gpus")
    rows = [
        [
            d.get("kind"),
            d.get("index"),
            d.get("type"),
            f"{d['memory_mb'] // 1024} GiB" if d.get("memory_mb") else None,
            d.get("deployment"),
            d.get("worker"),
        ]
        for d in devices
    ]
    columns = ("KIND", "INDEX", "TYPE", "MEMORY", "DEPLOYMENT", "WORKER")
    _table(columns, rows, "no accelerators (declare some with TORPOR_GPUS, e.g. 4xA100-80GB)")
