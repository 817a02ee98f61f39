"""What a user fills in per framework: the model field, each option (name, type, help) and
the engine's defaults. One description serves two readers: the engines take their option
names from it (an option not described is refused with 422; tests check every engine), and
`GET /api/frameworks` hands it to the console, whose forms are drawn from it, so the two
cannot drift.

Pure data; no engine is imported here (the engine modules import this one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

OptionKind = Literal["text", "integer", "number", "boolean", "choice", "list"]

# The spec's own default when an engine does not say otherwise.
DEFAULT_CONCURRENCY = 4
DTYPE_CHOICES = ("auto", "half", "float16", "bfloat16", "float", "float32")


@dataclass(frozen=True)
class OptionField:
    """One key of a framework's `options`."""

    key: str
    label: str
    kind: OptionKind
    help: str = ""
    placeholder: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    # A value the server accepts for this option (shown as a hint; the tests send it).
    example: Any = None


@dataclass(frozen=True)
class FrameworkInfo:
    name: str
    label: str
    model_label: str
    model_help: str
    model_placeholder: str
    model_required: bool
    # A model that works out of the box, where there is one.
    default_model: str = ""
    # Requests one worker takes at once unless the spec says otherwise.
    default_concurrency: int = DEFAULT_CONCURRENCY
    # Whether workers may have GPUs (embed runs on the CPU only).
    gpus: bool = True
    # False for frameworks torpor creates itself (functions: `torpor deploy app.py`).
    creatable: bool = True
    options: tuple[OptionField, ...] = ()

    def option_names(self) -> set[str]:
        return {f.key for f in self.options}

    def view(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = [asdict(f) for f in self.options]
        return data


_MODEL_SERVER_MODEL = dict(
    model_label="Model",
    model_help="A Hugging Face repo id (fetched once into the deployment's storage) or a "
    "local model directory.",
    model_placeholder="Qwen/Qwen2.5-0.5B-Instruct",
    model_required=True,
)


def _model_server_options(switch: OptionField) -> tuple[OptionField, ...]:
    """vLLM and SGLang share these names (each maps them to its own flags)."""
    return (
        OptionField(
            "tensor_parallel_size",
            "Tensor parallel size",
            "integer",
            "GPUs one model is split over; at most the worker's GPUs.",
            "1",
            example=1,
        ),
        OptionField(
            "dtype",
            "dtype",
            "choice",
            "Weights and activations type.",
            choices=DTYPE_CHOICES,
            example="auto",
        ),
        OptionField(
            "max_model_len",
            "Max model length",
            "integer",
            "Context window in tokens.",
            "8192",
            example=4096,
        ),
        OptionField(
            "quantization",
            "Quantization",
            "text",
            "Quantization method of the weights, e.g. awq, gptq, fp8.",
            "awq",
            example="fp8",
        ),
        OptionField(
            "gpu_memory_utilization",
            "GPU memory fraction",
            "number",
            "Share of each GPU's memory the engine may take (0 to 1).",
            "0.9",
            example=0.85,
        ),
        switch,
    )


FRAMEWORK_INFO: dict[str, FrameworkInfo] = {
    info.name: info
    for info in (
        FrameworkInfo(
            name="llama.cpp",
            label="llama.cpp",
            model_label="Model",
            model_help="A GGUF file path, a Hugging Face repo with one .gguf file, or the "
            "bundled smollm2-135m-instruct.",
            model_placeholder="smollm2-135m-instruct",
            model_required=True,
            default_model="smollm2-135m-instruct",
            # llama-cpp-python's server answers one request at a time; more wait in torpor's
            # queue (and drive the autoscaler) instead of queueing inside the engine.
            default_concurrency=1,
        ),
        FrameworkInfo(
            name="vllm",
            label="vLLM",
            **_MODEL_SERVER_MODEL,  # type: ignore[arg-type]
            options=_model_server_options(
                OptionField(
                    "enable_sleep_mode",
                    "Sleep mode",
                    "boolean",
                    "Idle workers release GPU memory (vLLM's sleep/wake).",
                    example=True,
                )
            ),
        ),
        FrameworkInfo(
            name="sglang",
            label="SGLang",
            **_MODEL_SERVER_MODEL,  # type: ignore[arg-type]
            options=_model_server_options(
                OptionField(
                    "enable_memory_saver",
                    "Memory saver",
                    "boolean",
                    "Idle workers release GPU memory (SGLang's memory saver).",
                    example=True,
                )
            ),
        ),
        FrameworkInfo(
            name="vllm-omni",
            label="vLLM-Omni (video)",
            model_label="Model",
            model_help="A diffusion video model: a Hugging Face repo id (fetched once into the "
            "deployment's storage) or a local model directory. Videos are jobs under "
            "/v1/videos.",
            model_placeholder="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            model_required=True,
            # Jobs run in the engine's background; a slot is held only while one is created,
            # polled or downloaded.
            default_concurrency=4,
            options=(
                OptionField(
                    "tensor_parallel_size",
                    "Tensor parallel size",
                    "integer",
                    "GPUs one model is split over; at most the worker's GPUs.",
                    "1",
                    example=1,
                ),
                OptionField(
                    "enable_cpu_offload",
                    "CPU offload",
                    "boolean",
                    "Keep idle model parts in CPU memory (less GPU memory, slower).",
                    example=True,
                ),
                OptionField(
                    "vae_use_slicing",
                    "VAE slicing",
                    "boolean",
                    "Decode frames in slices to save GPU memory.",
                    example=True,
                ),
                OptionField(
                    "vae_use_tiling",
                    "VAE tiling",
                    "boolean",
                    "Decode frames in tiles to save GPU memory.",
                    example=True,
                ),
                OptionField(
                    "enforce_eager",
                    "Eager mode",
                    "boolean",
                    "No torch.compile: faster start, slower generation.",
                    example=False,
                ),
            ),
        ),
        FrameworkInfo(
            name="ollama",
            label="Ollama",
            model_label="Model tag",
            model_help="An Ollama tag, pulled once into the deployment's storage.",
            model_placeholder="llama3.2:1b",
            model_required=True,
            options=(
                OptionField(
                    "keep_alive",
                    "Keep alive",
                    "text",
                    "How long Ollama keeps the model loaded; -1 (the default) while the "
                    "worker lives.",
                    "-1",
                    example="10m",
                ),
            ),
        ),
        FrameworkInfo(
            name="embed",
            label="Embeddings (torpor)",
            model_label="Model",
            model_help="A sentence-transformers model: a Hugging Face repo id, a directory, "
            "or the bundled all-minilm-l6-v2.",
            model_placeholder="all-minilm-l6-v2",
            model_required=True,
            default_model="all-minilm-l6-v2",
            gpus=False,
        ),
        FrameworkInfo(
            name="custom",
            label="Custom server",
            model_label="Model (optional)",
            model_help="Fetched like any model and passed to the command as {model}.",
            model_placeholder="",
            model_required=False,
            options=(
                OptionField(
                    "command",
                    "Command",
                    "text",
                    "Must contain {port} unless a fixed port is set; {host} and {model} are "
                    "filled in too.",
                    "python -m my_server --port {port}",
                    required=True,
                    example="python -m http.server {port}",
                ),
                OptionField(
                    "health_path",
                    "Health path",
                    "text",
                    "Answers 200 once the server is ready.",
                    "/health",
                    example="/",
                ),
                OptionField(
                    "port",
                    "Fixed port",
                    "integer",
                    "Instead of {port}; allows one worker only.",
                    "",
                ),
                OptionField(
                    "image",
                    "Container image",
                    "text",
                    "Run the command in this image (docker or podman).",
                    "ghcr.io/org/server:tag",
                ),
                OptionField(
                    "routes",
                    "Extra routes",
                    "list",
                    "More /v1/ paths inference keys may reach, one a line.",
                    "/v1/rerank",
                    example=["/v1/rerank"],
                ),
                OptionField(
                    "sleep_api",
                    "Sleep",
                    "choice",
                    "How an idle worker sleeps (sleep_after_s): freeze the process, call "
                    "vLLM's /sleep and /wake_up, or never sleep.",
                    "freeze",
                    choices=("freeze", "vllm", "none"),
                    example="freeze",
                ),
            ),
        ),
        FrameworkInfo(
            name="function",
            label="Function",
            model_label="Model",
            model_help="",
            model_placeholder="",
            model_required=False,
            creatable=False,
        ),
    )
}


def framework_info(name: str) -> FrameworkInfo:
    info = FRAMEWORK_INFO.get(name)
    if info is None:
        raise ValueError(f"unknown framework {name!r}")
    return info


def option_names(name: str) -> set[str]:
    return framework_info(name).option_names()


def default_concurrency(name: str) -> int:
    info = FRAMEWORK_INFO.get(name)
    return info.default_concurrency if info else DEFAULT_CONCURRENCY
