"""The environment a worker gets: an allowlist of the host's, never torpor's own settings.

A worker runs code torpor does not control (a custom command, a container, an engine that
loads remote code), so it must not see the admin key, the database URL or anything else
torpor was started with. It gets what makes a process work on this host (paths, locale,
time zone, CA bundles, proxies, caches, GPU libraries), then what torpor decides for it:
the deployment's `env` and the engine's variables, the devices it was given, and its id.
Pure: the host environment is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WORKER_ID_ENV = "TORPOR_WORKER_ID"
# torpor's own settings: never passed on, and a deployment's env cannot set them either.
RESERVED_PREFIX = "TORPOR_"
# The exceptions: what torpor's own worker programs read, set by their engine (the function
# server's target). The runtime gets the deployment's and the engine's env merged, the
# engine's last, so a deployment cannot replace these for an engine that sets them.
ENGINE_NAMES = frozenset({"TORPOR_FUNCTION"})

# Taken from the host as they are.
HOST_NAMES = frozenset(
    {
        # Process basics, locale and time zone.
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        # CA bundles: a host behind a TLS-inspecting proxy needs them for any download.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        # Proxies.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        # Caches shared by the engines of this host (no credentials in them).
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "TORCH_HOME",
        "TRITON_CACHE_DIR",
        "VLLM_CACHE_ROOT",
        # GPU and runtime libraries. CUDA_DEVICE_ORDER decides what a device index means.
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_DEVICE_ORDER",
    }
)
# Locale categories (LC_ALL, LC_CTYPE, ...), and NCCL's settings: how collective operations
# of multi-GPU engines reach this host's interconnect (NCCL_SOCKET_IFNAME, NCCL_IB_HCA,
# NCCL_P2P_DISABLE, ...). They describe the hardware, hold no secret, and a tensor-parallel
# worker that misses them hangs or runs slow on hosts that need them.
HOST_PREFIXES = ("LC_", "NCCL_")

# What the docker or podman command line needs to reach its engine. Given to the process
# that runs a container, not to the container (it receives the names listed with `-e`).
CONTAINER_CLI_NAMES = frozenset(
    {
        "DOCKER_HOST",
        "DOCKER_CONTEXT",
        "DOCKER_CONFIG",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
        "CONTAINER_HOST",
        "CONTAINER_CONNECTION",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "DBUS_SESSION_BUS_ADDRESS",
    }
)

# torpor's defaults, which the deployment's env may change.
DEFAULTS = {"PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class WorkerEnv:
    env: dict[str, str]
    # Names the launch asked for and did not get (torpor's reserved TORPOR_* names).
    refused: tuple[str, ...] = ()


def reserved(name: str) -> bool:
    """Whether `name` is one of torpor's own (TORPOR_*) that no launch may set."""
    return name.upper().startswith(RESERVED_PREFIX) and name not in ENGINE_NAMES


def host_allowed(name: str, *, container_cli: bool = False) -> bool:
    if name in HOST_NAMES or name.startswith(HOST_PREFIXES):
        return True
    return container_cli and name in CONTAINER_CLI_NAMES


def worker_env(
    host: Mapping[str, str],
    launch: Mapping[str, str],
    devices: Mapping[str, str],
    worker_id: str | None,
    *,
    container_cli: bool = False,
) -> WorkerEnv:
    """The environment of one worker process, from lowest to highest precedence:
    the allowed host variables, torpor's defaults, the launch's env (the deployment's env
    and the engine's variables), the device variables, the worker's id.

    `container_cli` is for a process that runs a container: it also gets what the docker
    or podman command needs to reach its engine.
    """
    env = {k: v for k, v in host.items() if host_allowed(k, container_cli=container_cli)}
    env.update(DEFAULTS)
    refused = tuple(sorted(k for k in launch if reserved(k)))
    env.update({k: v for k, v in launch.items() if not reserved(k)})
    env.update(devices)
    if worker_id is not None:
        env[WORKER_ID_ENV] = worker_id
    return WorkerEnv(env, refused)
