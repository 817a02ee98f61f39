"""The setup pipeline's one background job: prepare the directory, then fetch the model.

It changes no controller state itself: each step is reported to the controller's loop
(`Controller.job_report`), where `pipeline.plan_setup` decides the transitions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from torpor.engines import engine_for
from torpor.models import ModelError
from torpor.modelstore import DownloadProgress, ModelStore, source_for
from torpor.modelstore.placement import Placement, fetched_per_node, placement_for
from torpor.pipeline import JobState

if TYPE_CHECKING:
    from torpor.controller.core import Controller
    from torpor.controller.model import Deployment

log = logging.getLogger(__name__)


async def run_setup_job(ctl: Controller, dep: Deployment, run: int) -> None:
    spec = dep.spec
    root = ctl.storage_dir(spec.name)
    settings = ctl.settings
    placement = placement_for(settings.runtime, settings.shared_storage)
    if placement is Placement.SHARED and settings.shared_storage is not None:
        root = settings.shared_storage / "deployments" / spec.name  # once, for every node
    needs_model = engine_for(spec.framework).needs_model(spec)
    try:
        await asyncio.to_thread(ctl.worker_dir(spec.name).mkdir, parents=True, exist_ok=True)
        ctl.job_report(dep, run, JobState.FS_READY)
        if fetched_per_node(placement, spec, needs_model):
            # Each node fetches it into its cache when its first worker lands there.
            source = source_for(spec, needs_model)

            def per_node() -> None:
                dep.model_path, dep.model_size_bytes = None, None
                what = f"{source.kind.value} {source.ref}"
                ctl.event(dep, "model", "per_node", f"{what}: fetched once on each node")

            ctl.job_report(dep, run, JobState.DONE, per_node)
            return

        def on_progress(progress: DownloadProgress) -> None:
            # A progress value for the views only; no decision reads it.
            if dep.setup_run == run:
                dep.download = progress

        fetched = await ModelStore().fetch(spec, needs_model, root, on_progress)
    except asyncio.CancelledError:
        raise
    except (ModelError, OSError) as exc:
        _failed(ctl, dep, run, str(exc))
        return
    except Exception as exc:
        log.exception("setup of %s failed", spec.name)
        _failed(ctl, dep, run, f"setup failed: {exc}")
        return

    def stored() -> None:
        dep.model_path, dep.model_size_bytes = fetched.path, fetched.size_bytes
        if fetched.downloaded:
            what = f"{fetched.source.kind.value} {fetched.source.ref}"
            ctl.event(dep, "model", "stored", f"{what}: {fetched.size_bytes} bytes")

    ctl.job_report(dep, run, JobState.DONE, stored)


def _failed(ctl: Controller, dep: Deployment, run: int, reason: str) -> None:
    def note() -> None:
        dep.job_error = reason

    ctl.job_report(dep, run, JobState.FAILED, note)
