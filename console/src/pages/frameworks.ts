// What the create wizard and the settings tab know about each framework: its model field
// and its own options. The server validates the spec; these only shape the form.

export interface OptionField {
  key: string;
  label: string;
  placeholder?: string;
  kind?: "text" | "number";
  required?: boolean;
  help?: string;
}

export interface Framework {
  id: string;
  label: string;
  modelLabel: string;
  modelPlaceholder: string;
  modelRequired: boolean;
  defaultModel?: string;
  options: OptionField[];
}

export const FRAMEWORKS: Framework[] = [
  {
    id: "llama.cpp",
    label: "llama.cpp",
    modelLabel: "Model (GGUF path or bundled model)",
    modelPlaceholder: "smollm2-135m-instruct",
    modelRequired: true,
    defaultModel: "smollm2-135m-instruct",
    options: [],
  },
  {
    id: "vllm",
    label: "vLLM",
    modelLabel: "Model (Hugging Face repo)",
    modelPlaceholder: "Qwen/Qwen2.5-0.5B-Instruct",
    modelRequired: true,
    options: [
      { key: "dtype", label: "dtype", placeholder: "auto" },
      { key: "max_model_len", label: "Max model length", kind: "number", placeholder: "8192" },
      { key: "gpu_memory_utilization", label: "GPU memory utilization", kind: "number", placeholder: "0.9" },
      { key: "tensor_parallel_size", label: "Tensor parallel size", kind: "number", placeholder: "1" },
    ],
  },
  {
    id: "sglang",
    label: "SGLang",
    modelLabel: "Model (Hugging Face repo)",
    modelPlaceholder: "Qwen/Qwen2.5-0.5B-Instruct",
    modelRequired: true,
    options: [
      { key: "context_length", label: "Context length", kind: "number", placeholder: "8192" },
      { key: "mem_fraction_static", label: "Static memory fraction", kind: "number", placeholder: "0.85" },
      { key: "tp_size", label: "Tensor parallel size", kind: "number", placeholder: "1" },
    ],
  },
  {
    id: "ollama",
    label: "Ollama",
    modelLabel: "Model tag",
    modelPlaceholder: "llama3.2:1b",
    modelRequired: true,
    options: [{ key: "keep_alive", label: "Keep alive", placeholder: "5m" }],
  },
  {
    id: "custom",
    label: "Custom server",
    modelLabel: "Model (optional, passed as {model})",
    modelPlaceholder: "",
    modelRequired: false,
    options: [
      { key: "command", label: "Command", placeholder: "python -m my_server --port {port}", required: true, help: "Must contain {port} unless a fixed port is set; {host} and {model} are filled in too." },
      { key: "health_path", label: "Health path", placeholder: "/health" },
      { key: "port", label: "Fixed port", kind: "number", placeholder: "" },
    ],
  },
];

export function frameworkById(id: string): Framework {
  return FRAMEWORKS.find((f) => f.id === id) ?? { id, label: id, modelLabel: "Model", modelPlaceholder: "", modelRequired: false, options: [] };
}

export function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    if (eq > 0) env[t.slice(0, eq).trim()] = t.slice(eq + 1);
  }
  return env;
}

export function envText(env: Record<string, string>): string {
  return Object.entries(env)
    .map(([k, v]) => `${k}=${v}`)
    .join("\n");
}

export function parseArgs(text: string): string[] {
  return text
    .split("\n")
    .flatMap((line) => line.trim().split(/\s+/))
    .filter(Boolean);
}

export function cleanOptions(fw: Framework, values: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of fw.options) {
    const v = (values[f.key] ?? "").trim();
    if (!v) continue;
    out[f.key] = f.kind === "number" ? Number(v) : v;
  }
  return out;
}
