"""Rows the controller writes to the store."""

from __future__ import annotations

from torpor.controller.model import Deployment, Worker
from torpor.store.tables import DeploymentRow, WorkerRow


def deployment_row(dep: Deployment) -> DeploymentRow:
    return DeploymentRow(
        name=dep.name,
        spec=dep.spec.model_dump(mode="json"),
        spec_version=dep.spec_version,
        state=dep.state.value,
        reason=dep.reason,
        model_path=str(dep.model_path) if dep.model_path else None,
        created_at=dep.created_at,
        updated_at=dep.updated_at,
    )


def worker_row(w: Worker) -> WorkerRow:
    h = w.handle
    return WorkerRow(
        id=w.id,
        deployment=w.deployment,
        state=w.state.value,
        spec_version=w.spec_version,
        pid=h.pid if h else None,
        pid_create_time=h.create_time if h else None,
        port=h.port if h else None,
        restarts=w.restarts,
        reason=w.reason,
        exit_code=w.exit_code,
        log_path=str(w.log_path),
        gpu_ids=w.gpu_ids,
        started_at=w.started_at,
        ready_at=w.ready_at,
        stopped_at=w.stopped_at,
    )
