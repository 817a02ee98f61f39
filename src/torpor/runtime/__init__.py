"""Where workers run: one narrow protocol, one module per backend."""

from torpor.runtime.base import LaunchSpec, ProbeResult, Runtime, WorkerHandle

__all__ = ["LaunchSpec", "ProbeResult", "Runtime", "WorkerHandle"]
