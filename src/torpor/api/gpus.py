"""Accelerators: the inventory, and which worker of which deployment holds each device."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from torpor.api.deps import AdminDep, ServicesDep
from torpor.gpus import VISIBLE_DEVICES_ENV

router = APIRouter(prefix="/api/gpus", tags=["gpus"])


@router.get("")
async def list_gpus(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    pool = svc.gpus
    owners = {
        w.id: dep.name for dep in svc.controller.deployments.values() for w in dep.workers.values()
    }
    data = []
    for d in pool.devices:
        worker = pool.holder(d)
        data.append(
            {
                "index": d.index,
                "kind": d.kind,
                "type": d.model,
                "memory_mb": d.memory_mb,
                "env": VISIBLE_DEVICES_ENV[d.kind],
                "worker": worker,
                "deployment": owners.get(worker) if worker else None,
            }
        )
    free = sum(1 for row in data if row["worker"] is None)
    out: dict[str, Any] = {"data": data, "total": len(data), "free": free}
    nodes = getattr(svc.runtime, "nodes", None)
    if nodes is None:
        # The local runtime: this host is the one node.
        models = sorted({d.model for d in pool.devices if d.model})
        out["nodes"] = [
            {
                "node": "local",
                "address": svc.settings.host,
                "alive": True,
                "type": ", ".join(models) or None,
                "gpus": [
                    {
                        "index": row["index"],
                        "kind": row["kind"],
                        "type": row["type"],
                        "worker": row["worker"],
                        "deployment": row["deployment"],
                    }
                    for row in data
                ],
            }
        ]
    else:
        # A cluster runtime: devices per node (node id, address, type, which worker holds
        # each), from the cluster's own state.
        out["nodes"] = await nodes()
        for node in out["nodes"]:
            for gpu in node["gpus"]:
                gpu["deployment"] = owners.get(gpu["worker"]) if gpu["worker"] else None
        out["total"] = sum(len(n["gpus"]) for n in out["nodes"])
        out["free"] = sum(1 for n in out["nodes"] for g in n["gpus"] if g["worker"] is None)
    return out
