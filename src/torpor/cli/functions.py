"""Commands for functions: `torpor deploy app.py` (via deploy), `torpor run
app.py::fn --name value ...`, and `torpor apps ls|rm`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from torpor.cli.common import (
    Output,
    OutputOpt,
    _api,
    _fail,
    _json_out,
    _table,
    app,
    apps_app,
    console,
    err_console,
)
from torpor.sdk import FunctionError


def _load(path: Path) -> Any:
    from torpor.functions.loader import load_module

    try:
        return load_module(path)
    except (OSError, ImportError) as exc:
        raise _fail(f"cannot load {path}: {exc}") from None


def _log(line: str) -> None:
    err_console.print(Text(line, style="dim"))


def deploy_app_file(ctx: typer.Context, path: Path) -> None:
    """Build the images of every App in the file (each once) and deploy its functions."""
    from torpor.functions.loader import apps_in

    module = _load(path)
    try:
        apps = apps_in(module)
    except LookupError as exc:
        raise _fail(str(exc)) from None
    with _api(ctx) as client:
        for application in apps:
            deployments = application.deploy(client, on_log=_log)
            for dep in deployments:
                console.print(Text(f"{dep.name}: {dep.status} ({application.name})"))


def _value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, true), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def call_arguments(extra: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """`a --name value --flag=x b` → (["a", "b"], {"name": "value", "flag": "x"})."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        item = extra[i]
        if item.startswith("--") and len(item) > 2:
            key, sep, raw = item[2:].partition("=")
            if not sep:
                if i + 1 >= len(extra):
                    raise typer.BadParameter(f"{item} needs a value")
                raw, i = extra[i + 1], i + 1
            kwargs[key.replace("-", "_")] = _value(raw)
        else:
            args.append(_value(item))
        i += 1
    return args, kwargs


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(help="FILE::FUNCTION or FILE::Class.method, e.g. app.py::predict.")
    ],
) -> None:
    """Call one function of an app file once (deploying it first; an unchanged app deploys
    in moments): extra `--name value` become keyword arguments, the rest positional."""
    from torpor.functions.app import Cls
    from torpor.functions.loader import apps_in, target_in

    file, sep, name = target.partition("::")
    if not sep or not name:
        raise _fail("expected FILE::FUNCTION, e.g. app.py::predict")
    args, kwargs = call_arguments(list(ctx.args))
    module = _load(Path(file))
    try:
        fn = target_in(module, name)
        apps = apps_in(module)
    except LookupError as exc:
        raise _fail(str(exc)) from None
    method = name.partition(".")[2] or None
    if isinstance(fn, Cls) and method not in fn.methods:
        raise _fail(f"{name}: name a method of {fn.attr}: one of {', '.join(fn.methods)}")
    with _api(ctx) as client:
        for application in apps:
            application.deploy(client, on_log=_log)
        try:
            result = client.call_function(
                fn.app.name, fn.attr, args, kwargs, method=method, codec=fn.codec()
            )
        except FunctionError as exc:
            err_console.print(Text(exc.remote_traceback.rstrip()))
            raise _fail(exc.message) from None
    print(json.dumps(result, indent=2, default=str))


@apps_app.command("ls")
def apps_ls(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Apps and their functions, with each function's status and workers."""
    from torpor.functions.deploy import app_deployments

    with _api(ctx) as client:
        apps = app_deployments(client)
    if output is Output.json:
        _json_out(
            {name: [d.model_dump(mode="json") for d in deps] for name, deps in sorted(apps.items())}
        )
        return
    rows = [
        [name, d.options.get("function"), d.options.get("kind"), d.name, d.status,
         f"{d.ready_workers}/{d.desired_workers}", d.options.get("image")]
        for name, deps in sorted(apps.items())
        for d in deps
    ]  # fmt: skip
    columns = ("APP", "FUNCTION", "KIND", "DEPLOYMENT", "STATUS", "WORKERS", "IMAGE")
    _table(columns, rows, "no apps")


@apps_app.command("rm")
def apps_rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="App name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every deployment of an app."""
    from torpor.functions.deploy import delete_app

    if not yes:
        try:
            typer.confirm(f"Delete app {name} and all its functions?", abort=True)
        except typer.Abort:
            raise _fail(
                f"app {name} not deleted: answer y, or pass --yes (-y) to delete without "
                "asking (scripts, no terminal)"
            ) from None
    with _api(ctx) as client:
        deleted = delete_app(name, client)
    if not deleted:
        raise _fail(f"no app named {name}")
    console.print(Text(f"deleted app {name}: {', '.join(deleted)}"))
