"""The controller: one loop that owns deployments and workers (see `core`)."""

from torpor.controller.core import Controller
from torpor.controller.model import Deployment, Worker, WorkerMeter
from torpor.states import LIVE_WORKER_STATES

__all__ = ["LIVE_WORKER_STATES", "Controller", "Deployment", "Worker", "WorkerMeter"]
