"""JSON views of controller state for the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from torpor.controller import Controller, Deployment, Worker
from torpor.gpus import matches_model, wanted_types
from torpor.modelstore import derive_catalog, looks_local
from torpor.states import WorkerState, lifecycle

_FAILING_FIRST = {WorkerState.FAILED: 0, WorkerState.PROVISIONING: 1, WorkerState.DRAINING: 2}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def worker_view(w: Worker, inflight: int) -> dict[str, Any]:
    h = w.handle
    return {
        "id": w.id,
        "state": w.state.value,
        "started_at": _iso(w.started_at),
        "ready_at": _iso(w.ready_at),
        "stopped_at": _iso(w.stopped_at),
        "restarts": w.restarts,
        "reason": w.reason,
        "exit_code": w.exit_code,
        "pid": h.pid if h else None,
        "port": h.port if h else None,
        "host": h.host if h else None,
        "node": w.node,
        "spec_version": w.spec_version,
        "inflight": inflight,
        "gpu_ids": w.gpu_ids,
        "wakes": w.wakes,
        "last_wake_ms": round(w.last_wake_s * 1000, 1) if w.last_wake_s is not None else None,
    }


def caller_worker_view(w: Worker, inflight: int) -> dict[str, Any]:
    """A worker as a non-admin key sees it: state and timing, no pid, address or reason."""
    return {
        "id": w.id,
        "state": w.state.value,
        "started_at": _iso(w.started_at),
        "ready_at": _iso(w.ready_at),
        "stopped_at": _iso(w.stopped_at),
        "inflight": inflight,
    }


def ordered_workers(dep: Deployment) -> list[Worker]:
    """Live workers first (failing ones at the very top), newest first within a group."""
    return sorted(
        dep.workers.values(),
        key=lambda w: (not w.live, _FAILING_FIRST.get(w.state, 3), -w.started_mono),
    )


# The spec fields a caller (non-admin key) sees: what it needs to call the deployment and
# to understand its scaling. Never env, options, command lines, paths or addresses.
CALLER_SPEC_FIELDS = frozenset(
    {
        "name",
        "description",
        "framework",
        "min_workers",
        "max_workers",
        "concurrency",
        "idle_timeout_s",
        "wait_time_s",
        "max_queue",
        "async_enabled",
    }
)


def _is_local_path(model: str) -> bool:
    # The model store's own rule (a relative folder that exists here is a path too).
    return model.startswith("file:") or looks_local(model)


def deployment_view(controller: Controller, dep: Deployment, *, admin: bool) -> dict[str, Any]:
    """The admin view (everything) or the caller view (see CALLER_SPEC_FIELDS)."""
    if admin:
        return _admin_view(controller, dep)
    gate = dep.gate
    workers = ordered_workers(dep)
    status = controller.status(dep)
    return {
        **dep.spec.model_dump(mode="json", include=set(CALLER_SPEC_FIELDS)),
        # The model a caller may know: a hub id or tag, never a server path.
        "model": None if _is_local_path(dep.spec.model) else dep.spec.model,
        "status": status.value,
        "lifecycle": lifecycle(status, [w.state for w in workers]).value,
        "endpoint": f"/openai/{dep.name}/v1",
        "created_at": _iso(dep.created_at),
        "updated_at": _iso(dep.updated_at),
        "ready_workers": sum(1 for w in workers if w.state is WorkerState.HEALTHY),
        "desired_workers": dep.desired,
        "queue": {"waiting": gate.waiting, "inflight": gate.total_inflight},
        "catalog": derive_catalog(dep.spec),
        "workers": [caller_worker_view(w, gate.inflight.get(w.id, 0)) for w in workers],
    }


def _admin_view(controller: Controller, dep: Deployment) -> dict[str, Any]:
    gate = dep.gate
    workers = ordered_workers(dep)
    status = controller.status(dep)
    return {
        **dep.spec.model_dump(mode="json"),
        "state": dep.state.value,
        "status": status.value,
        "lifecycle": lifecycle(status, [w.state for w in workers]).value,
        "reason": dep.reason or _status_reason(controller, dep),
        "spec_version": dep.spec_version,
        "model_path": str(dep.model_path) if dep.model_path else None,
        "endpoint": f"/openai/{dep.name}/v1",
        "created_at": _iso(dep.created_at),
        "updated_at": _iso(dep.updated_at),
        "ready_workers": sum(1 for w in workers if w.state is WorkerState.HEALTHY),
        "desired_workers": dep.desired,
        "queue": {"waiting": gate.waiting, "inflight": gate.total_inflight},
        "last_error": dep.last_error,
        # Download progress while the model is fetched (bytes, total, percent), then done.
        "download": dep.download.view() if dep.download is not None else None,
        "storage": {
            "dir": str(controller.storage_dir(dep.name)),
            "limit_gb": dep.spec.storage_gb,
            "model_bytes": dep.model_size_bytes,
        },
        # The catalog entry: spec values, the rest derived from the model.
        "catalog": derive_catalog(dep.spec),
        "workers": [worker_view(w, gate.inflight.get(w.id, 0)) for w in workers],
    }


def _status_reason(controller: Controller, dep: Deployment) -> str | None:
    if dep.budget_refusal:
        return dep.budget_refusal
    if dep.waiting_for_gpus and dep.spec.gpu_type:
        types = " or ".join(wanted_types(dep.spec.gpu_type))
        known = controller.runtime.assigns_devices or any(
            matches_model(d.model, dep.spec.gpu_type) for d in controller.gpus.devices
        )
        return f"waiting for GPUs of type {types}" + ("" if known else " (none in the inventory)")
    if dep.waiting_for_gpus:
        return "No GPUs available for scale-up"
    if dep.last_error and dep.failures:
        err = dep.last_error
        crash = "crash loop: " if dep.failures >= controller.settings.crash_loop_threshold else ""
        return f"{crash}worker {err['worker']} {err.get('reason') or 'failed'}"
    return None
