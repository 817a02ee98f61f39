"""Commands for API keys and accelerators: keys create|ls|revoke, gpus."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from torpor.cli.common import (
    Output,
    OutputOpt,
    _ago,
    _api,
    _json_out,
    _table,
    app,
    console,
    err_console,
    keys_app,
    money,
)


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
    scope = "admin" if key.admin else ", ".join(key.deployments or []) or "all"
    err_console.print(Text(f"created key {key.name} (id {key.id}, scope: {scope})"))
    # The secret alone on stdout, so `KEY=$(torpor keys create x)` works.
    print(key.key)
    err_console.print(Text("Store this key now: it will not be shown again.", style="yellow"))


def _budget(spent: float | None, budget: float | None) -> str:
    if budget is None:
        return money(spent) if spent else "-"
    flag = " OVER" if (spent or 0) >= budget else ""
    return f"{money(spent)} of {money(budget)}{flag}"


@keys_app.command("ls")
def keys_ls(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List API keys (secrets are never shown), with month-to-date spend and last use."""
    with _api(ctx) as client:
        items = client.list_keys()
    if output is Output.json:
        _json_out([k.model_dump(mode="json") for k in items])
        return
    rows = [
        [k.id, k.name, "all" if k.deployments is None else ", ".join(k.deployments),
         "yes" if k.admin else "no",
         _budget(getattr(k, "spend_month_usd", None), k.budget_usd_monthly),
         _ago(getattr(k, "last_used_at", None)), "revoked" if k.revoked_at else "active"]
        for k in items
    ]  # fmt: skip
    columns = ("ID", "NAME", "DEPLOYMENTS", "ADMIN", "SPEND (MONTH)", "LAST USED", "STATE")
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
def list_gpus(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Accelerators per node: type, memory and the worker that holds each (with the ray
    runtime, every node of the cluster; with the local runtime, this host)."""
    with _api(ctx) as client:
        devices = client.gpus()
        nodes = client.gpu_nodes()
    if output is Output.json:
        _json_out(
            {
                "devices": [d.model_dump(mode="json") for d in devices],
                "nodes": [n.model_dump(mode="json") for n in nodes],
            }
        )
        return
    memory = {(d.kind, d.index): d.memory_mb for d in devices}
    rows = [
        [
            n.node if n.node == "local" else f"{n.address}/{n.node[:8]}",
            g.kind,
            g.index,
            g.type or n.type,
            f"{mb // 1024} GiB" if (mb := memory.get((g.kind or "", g.index))) else None,
            g.deployment,
            g.worker,
        ]
        for n in nodes
        for g in n.gpus
    ]
    # A cluster node as address/short id; the local runtime's one node as "local".
    columns = ("NODE", "KIND", "INDEX", "TYPE", "MEMORY", "DEPLOYMENT", "WORKER")
    _table(columns, rows, "no accelerators (declare some with TORPOR_GPUS, e.g. 4xA100-80GB)")
