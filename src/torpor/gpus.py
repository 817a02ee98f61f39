"""Accelerator inventory and assignment: disjoint devices per worker."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import dataclass

NVIDIA = "nvidia.com/gpu"
FURIOSA = "furiosa.ai/rngd"
# The variable through which each accelerator kind is handed to a process.
VISIBLE_DEVICES_ENV = {NVIDIA: "CUDA_VISIBLE_DEVICES", FURIOSA: "FURIOSA_DEVICES"}

_DECLARED = re.compile(r"^\s*(\d+)\s*[xX]\s*([A-Za-z0-9._-]+)\s*$")


@dataclass(frozen=True)
class Device:
    index: int
    kind: str
    model: str
    memory_mb: int | None


def parse_declared(text: str) -> list[Device]:
    """`4xA100-80GB` or `2xH100,2xRNGD` → devices; a model name with RNGD is a Furiosa one."""
    devices: list[Device] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _DECLARED.match(part)
        if not m:
            raise ValueError(f"TORPOR_GPUS: cannot parse {part!r}; expected e.g. 4xA100-80GB")
        count, model = int(m.group(1)), m.group(2)
        kind = FURIOSA if "rngd" in model.lower() else NVIDIA
        mem = re.search(r"(\d+)GB", model, re.IGNORECASE)
        for _ in range(count):
            same_kind = sum(1 for d in devices if d.kind == kind)
            devices.append(
                Device(same_kind, kind, model, int(mem.group(1)) * 1024 if mem else None)
            )
    return devices


def detect_nvml() -> list[Device] | None:
    """NVIDIA devices from NVML (nvidia-ml-py); None when NVML is not available here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver or no library
        return None
    try:
        devices = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024)
            devices.append(Device(i, NVIDIA, str(name), memory))
        return devices
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def detect_devices() -> list[Device]:
    """The accelerators of this host: NVML when it works, else nvidia-smi, else none."""
    devices = detect_nvml()
    return devices if devices is not None else detect_nvidia()


def detect_nvidia() -> list[Device]:
    """NVIDIA devices from nvidia-smi; none when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        idx, name, mem = (x.strip() for x in line.split(","))
        devices.append(Device(int(idx), NVIDIA, name, int(float(mem))))
    return devices


def wanted_types(wanted: str) -> list[str]:
    """The acceptable device models of a spec's `gpu_type` ("A100,L4" → ["A100", "L4"])."""
    return [t.strip() for t in wanted.split(",") if t.strip()]


def matches_model(device_model: str, wanted: str) -> bool:
    """`H100` matches `NVIDIA H100 80GB HBM3` and `H100-80GB`; case and separators aside;
    `L4` does not match `L40S`.
    `wanted` may list acceptable models, comma-separated: any of them matches."""

    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()

    have = f" {norm(device_model)} "
    for want in map(norm, wanted_types(wanted)):
        if want and f" {want} " in have:
            return True
        # A prefix ("H100" of "H100SXM"), but not another number ("L4" of "L40S").
        rest = have.strip().removeprefix(want)
        if want and rest != have.strip() and not rest[:1].isdigit():
            return True
    return False


class GpuPool:
    """Which worker holds which device. Owned by the controller loop."""

    def __init__(self, devices: list[Device]):
        self.devices = devices
        self.holders: dict[tuple[str, int], str] = {}

    def free(self, kind: str = NVIDIA, model: str | None = None) -> list[Device]:
        """Free devices of a kind (and of a model, when one is asked for)."""
        return [
            d
            for d in self.devices
            if d.kind == kind
            and (kind, d.index) not in self.holders
            and (model is None or matches_model(d.model, model))
        ]

    def allocate(
        self, worker_id: str, count: int, kind: str = NVIDIA, model: str | None = None
    ) -> list[int] | None:
        """Device indices for the worker, or None when not enough are free."""
        if count == 0:
            return []
        free = self.free(kind, model)
        if len(free) < count:
            return None
        chosen = [d.index for d in free[:count]]
        for i in chosen:
            self.holders[(kind, i)] = worker_id
        return chosen

    def claim(self, worker_id: str, indices: list[int], kind: str = NVIDIA) -> None:
        """Record devices a worker already holds (one adopted from an earlier run)."""
        for i in indices:
            self.holders[(kind, i)] = worker_id

    def holder(self, device: Device) -> str | None:
        return self.holders.get((device.kind, device.index))

    def devices_of(self, worker_id: str) -> list[Device]:
        held = {k for k, w in self.holders.items() if w == worker_id}
        return [d for d in self.devices if (d.kind, d.index) in held]

    def release(self, worker_id: str) -> None:
        self.holders = {k: w for k, w in self.holders.items() if w != worker_id}

    def env_for(self, indices: list[int], kind: str = NVIDIA) -> dict[str, str]:
        if not indices:
            return {}
        return {VISIBLE_DEVICES_ENV[kind]: ",".join(map(str, indices))}
