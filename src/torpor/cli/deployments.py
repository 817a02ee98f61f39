"""Commands for the server and deployments: serve, deploy, update, ls, get, logs, events,
usage, bench, rm."""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from torpor.cli.common import (
    ArgOpt,
    ConcOpt,
    DescOpt,
    EnvOpt,
    FileOpt,
    FrameworkOpt,
    GpusOpt,
    IdleOpt,
    MaxOpt,
    MinOpt,
    ModelOpt,
    NameArg,
    OptionOpt,
    Output,
    OutputOpt,
    QueueOpt,
    WaitTimeOpt,
    _ago,
    _api,
    _endpoint,
    _fail,
    _json_out,
    _short,
    _spec,
    _t,
    _table,
    _wait,
    app,
    console,
    err_console,
    money,
    target,
)
from torpor.sdk import Client, ConflictError, NotFoundError


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address.", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port.", show_default=False)] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Where workers run: local or ray.", show_default=False)
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (default: auto).", show_default=False),
    ] = None,
) -> None:
    """Run the torpor server (blocks); `--data-dir DIR` keeps its state in DIR."""
    from torpor.server import serve as run_server
    from torpor.settings import Settings

    overrides: dict[str, Any] = {"host": host, "port": port, "data_dir": target(ctx).data_dir}
    overrides.update(runtime=runtime, ray_address=ray_address)
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
    """Create a deployment (from flags and/or a spec file), or deploy the functions of an
    app file: `torpor deploy app.py`."""
    if name.endswith(".py"):
        from torpor.cli.functions import deploy_app_file

        deploy_app_file(ctx, Path(name))
        return
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
            except ConflictError:
                raise _fail(
                    f"deployment {name} already exists: use `torpor update {name} ...` "
                    "or `torpor deploy --update`"
                ) from None
        console.print(Text(f"{verb} deployment {name} ({dep.state})"))
        if wait:
            _wait(client, name)
        else:
            console.print(Text(f"endpoint: {_endpoint(client, dep)}"))


def _exists(client: Client, name: str) -> bool:
    try:
        client.get_deployment(name)
    except NotFoundError:
        return False
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
        console.print(Text(f"updated deployment {name} ({dep.state}, {dep.status})"))
        if wait:
            _wait(client, name)


def workers_text(ready: int, desired: int) -> str:
    """`2 ready`, `1 ready, 0 needed` (idle, stops after its idle timeout), `0 ready, 1 needed`."""
    return f"{ready} ready" if ready == desired else f"{ready} ready, {desired} needed"


@app.command("ls")
def list_deployments(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List deployments."""
    with _api(ctx) as client:
        deployments = client.list_deployments()
    if output is Output.json:
        _json_out([d.model_dump(mode="json") for d in deployments])
        return
    rows = [
        [d.name, d.framework, _short(d.model), d.status,
         workers_text(d.ready_workers, d.desired_workers),
         f"{d.queue.waiting} waiting, {d.queue.inflight} running"]
        for d in deployments
    ]  # fmt: skip
    columns = ("NAME", "FRAMEWORK", "MODEL", "STATUS", "WORKERS", "REQUESTS")
    _table(columns, rows, "no deployments", wrap="MODEL")


def _worker_endpoint(worker: dict[str, Any]) -> str | None:
    host, port = worker.get("host"), worker.get("port")
    return f"http://{host}:{port}" if host and port else None


@app.command()
def get(
    ctx: typer.Context,
    name: NameArg,
    as_json: Annotated[bool, typer.Option("--json", help="The same as -o json.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Show one deployment and its workers (with their endpoints, for admin keys)."""
    with _api(ctx) as client:
        found = client.get_deployment(name)
        endpoint = _endpoint(client, found)
    dep = found.model_dump(mode="json", exclude_unset=True)
    if as_json or output is Output.json:
        _json_out(dep)
        return
    queue_ = dep.get("queue") or {}
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
        ("workers", f"{workers_text(dep.get('ready_workers', 0), dep.get('desired_workers', 0))}"
                    f" (min {dep.get('min_workers')}, max {dep.get('max_workers')})"),
        ("queue", f"{queue_.get('waiting', 0)} waiting, {queue_.get('inflight', 0)} in flight"
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
    workers = dep.get("workers") or []
    # Admin keys see where each worker listens; others get the caller view without it.
    admin_view = any("port" in w or "host" in w for w in workers)
    worker_rows = [
        [w.get("id"), w.get("state"), *([_worker_endpoint(w)] if admin_view else []),
         _ago(w.get("started_at")), w.get("restarts", 0), w.get("reason")]
        for w in workers
    ]  # fmt: skip
    columns = ("ID", "STATE", *(("ENDPOINT",) if admin_view else ()), "STARTED", "RESTARTS")
    _table((*columns, "REASON"), worker_rows, "no workers", wrap="REASON")


@app.command()
def logs(
    ctx: typer.Context,
    name: NameArg,
    worker: Annotated[str | None, typer.Option("--worker", help="Only this worker.")] = None,
    tail: Annotated[int, typer.Option("--tail", min=0, help="Lines of history.")] = 200,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream new lines until the deployment is gone.")
    ] = False,
) -> None:
    """Print worker logs."""
    try:
        with _api(ctx) as client:
            lines = client.logs(name, worker=worker, tail=tail, follow=follow)
            for line in _until_deleted(client, name, lines) if follow else lines:
                print(line, flush=True)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


GONE_STATES = frozenset({"deleting", "cleaning", "deleted"})


def _until_deleted(
    client: Client, name: str, lines: Iterator[str], check_s: float = 1.0
) -> Iterator[str]:
    """The followed lines until the deployment is deleted (the server's stream stays open):
    the stream is read in a thread while this one checks the deployment every `check_s`."""
    got: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        try:
            for line in lines:
                got.put(("line", line))
            got.put(("end", None))
        except BaseException as exc:  # handed to the reading thread, raised there
            got.put(("error", exc))

    threading.Thread(target=pump, name="torpor-logs", daemon=True).start()
    next_check = time.monotonic() + check_s
    while True:
        try:
            kind, value = got.get(timeout=max(0.0, next_check - time.monotonic()))
        except queue.Empty:
            kind, value = "check", None
        if kind == "line":
            yield value
        elif kind == "end":
            return
        elif kind == "error":
            raise value
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + check_s
            try:
                gone = client.get_deployment(name).state in GONE_STATES
            except NotFoundError:
                gone = True
            if gone:
                err_console.print(Text(f"deployment {name} was deleted"))
                return


@app.command()
def events(ctx: typer.Context, name: NameArg, output: OutputOpt = Output.table) -> None:
    """Show a deployment's setup and worker events."""
    with _api(ctx) as client:
        items = client.events(name)
    if output is Output.json:
        _json_out([e.model_dump(mode="json") for e in items])
        return
    rows = [[e.at, e.kind, e.state, e.message] for e in items]
    _table(("AT", "KIND", "STATE", "MESSAGE"), rows, "no events", wrap="MESSAGE")


WINDOWS = ("1h", "6h", "24h", "7d", "30d")


@app.command()
def usage(
    ctx: typer.Context,
    window: Annotated[str, typer.Option(help="1h, 6h, 24h, 7d or 30d.")] = "24h",
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Print usage and spend: the summary, then one row per deployment."""
    if window not in WINDOWS:
        raise typer.BadParameter(f"must be one of {', '.join(WINDOWS)}", param_hint="--window")
    with _api(ctx) as client:
        total = client.usage_summary(window, deployment).model_dump()
        rows = [] if deployment else [r.model_dump() for r in client.usage_by_deployment(window)]
    if deployment is None:
        rows = [*rows, {**total, "deployment": "TOTAL"}]
    else:
        rows = [{**total, "deployment": deployment}]
    if output is Output.json:
        _json_out(rows)
        return
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
                money(r.get("cost", 0)),
            ]
            for r in rows
        ],
        "no usage",
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmarks (bench/ in the source checkout): `torpor bench all --smoke`."""
    repo = Path(__file__).resolve().parents[3]
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
    """Delete a deployment, its workers and its storage. Asks first; `--yes` (-y) does not
    (needed without a terminal, e.g. in scripts)."""
    if not yes:
        try:
            typer.confirm(f"Delete deployment {name}?", abort=True)
        except typer.Abort:
            raise _fail(
                f"deployment {name} not deleted: answer y, or pass --yes (-y) to delete "
                "without asking (scripts, no terminal)"
            ) from None
    with _api(ctx) as client:
        client.delete_deployment(name)
    console.print(Text(f"deleted deployment {name}"))
