// What the create wizard and the settings tab know about each framework comes from the
// server (GET /api/frameworks: the same description its validation uses), so the form and
// the server cannot disagree about option names or types.
import { api } from "../api";
import { maskValue } from "../util";

export interface OptionField {
  key: string;
  label: string;
  kind: "text" | "integer" | "number" | "boolean" | "choice" | "list";
  help: string;
  placeholder: string;
  required: boolean;
  choices: string[];
  example: unknown;
}

export interface Framework {
  name: string;
  label: string;
  model_label: string;
  model_help: string;
  model_placeholder: string;
  model_required: boolean;
  default_model: string;
  default_concurrency: number;
  gpus: boolean;
  creatable: boolean;
  options: OptionField[];
}

let cache: Promise<Framework[]> | null = null;

export function loadFrameworks(): Promise<Framework[]> {
  cache ??= api<{ data: Framework[] }>("/api/frameworks")
    .then((r) => r.data)
    .catch((e) => {
      cache = null;
      throw e;
    });
  return cache;
}

export function frameworkByName(list: Framework[], name: string): Framework {
  return (
    list.find((f) => f.name === name) ?? {
      name,
      label: name,
      model_label: "Model",
      model_help: "",
      model_placeholder: "",
      model_required: false,
      default_model: "",
      default_concurrency: 4,
      gpus: true,
      creatable: false,
      options: [],
    }
  );
}

export type OptionValues = Record<string, string | boolean>;

/** Form values of a spec's options (lists one a line, the rest as text). */
export function optionValues(fw: Framework, options: Record<string, unknown>): OptionValues {
  const out: OptionValues = {};
  for (const f of fw.options) {
    const v = options[f.key];
    if (v === undefined || v === null) continue;
    out[f.key] = f.kind === "boolean" ? Boolean(v) : f.kind === "list" && Array.isArray(v) ? v.join("\n") : String(v);
  }
  return out;
}

/** The options object the server gets: typed by kind; empty fields left out. A number that
 * does not parse is sent as typed, so the server's 422 names the field. */
export function cleanOptions(fw: Framework, values: OptionValues): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of fw.options) {
    const v = values[f.key];
    if (f.kind === "boolean") {
      if (v === true) out[f.key] = true;
      continue;
    }
    const text = typeof v === "string" ? v.trim() : "";
    if (!text) continue;
    if (f.kind === "integer" || f.kind === "number") {
      const n = Number(text);
      out[f.key] = Number.isFinite(n) ? n : text;
    } else if (f.kind === "list") {
      out[f.key] = text
        .split("\n")
        .map((s) => s.trim())
        .filter(Boolean);
    } else out[f.key] = text;
  }
  return out;
}

export const MASK = "••••••••";

/** Environment as text, secret-looking values masked (see maskValue). */
export function envText(env: Record<string, string>): string {
  return Object.entries(env)
    .map(([k, v]) => `${k}=${maskValue(k, v)}`)
    .join("\n");
}

/** KEY=value lines; a value left masked keeps the deployment's current one. */
export function parseEnv(text: string, current: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    if (eq > 0) {
      const key = t.slice(0, eq).trim();
      const value = t.slice(eq + 1);
      env[key] = value === MASK && key in current ? current[key] : value;
    }
  }
  return env;
}

export function parseArgs(text: string): string[] {
  return text
    .split("\n")
    .flatMap((line) => line.trim().split(/\s+/))
    .filter(Boolean);
}

/** Every other spec field, as form text (empty = the server's default). */
export interface Extras {
  wait_time_s: string;
  max_queue: string;
  accelerator: string;
  gpu_type: string;
  storage_gb: string;
  revision: string;
  async_enabled: boolean;
  prompt_per_mtok: string;
  completion_per_mtok: string;
  gpu_hourly: string;
  storage_gb_month: string;
  budget_usd_monthly: string;
  budget_tokens_monthly: string;
}

const s = (v: unknown) => (v === null || v === undefined ? "" : String(v));

export function extrasOf(dep: Record<string, any> | null): Extras {
  const prices = dep?.prices ?? {};
  return {
    wait_time_s: s(dep?.wait_time_s),
    max_queue: s(dep?.max_queue),
    accelerator: dep?.accelerator ?? "nvidia.com/gpu",
    gpu_type: s(dep?.gpu_type),
    storage_gb: s(dep?.storage_gb),
    revision: s(dep?.source?.revision),
    async_enabled: dep?.async_enabled ?? true,
    prompt_per_mtok: s(prices.prompt_per_mtok),
    completion_per_mtok: s(prices.completion_per_mtok),
    gpu_hourly: s(prices.gpu_hourly),
    storage_gb_month: s(prices.storage_gb_month),
    budget_usd_monthly: s(dep?.budget_usd_monthly),
    budget_tokens_monthly: s(dep?.budget_tokens_monthly),
  };
}

const num = (text: string): number | string | null => {
  const t = text.trim();
  if (!t) return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : t;
};

/** Spec fields from the extras; `full` (a patch) sends cleared fields as null/defaults. */
export function extrasToSpec(e: Extras, full: boolean, current: Record<string, any> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const put = (key: string, value: unknown) => {
    if (value !== null || full) out[key] = value;
  };
  const wait = num(e.wait_time_s);
  if (wait !== null) out.wait_time_s = wait;
  const queue = num(e.max_queue);
  if (queue !== null) out.max_queue = queue;
  out.accelerator = e.accelerator;
  put("gpu_type", e.gpu_type.trim() || null);
  const storage = num(e.storage_gb);
  if (storage !== null) out.storage_gb = storage;
  const source = { ...(current.source ?? {}), revision: e.revision.trim() || null };
  if (e.revision.trim() || full) out.source = source;
  out.async_enabled = e.async_enabled;
  const prices: Record<string, unknown> = {};
  for (const k of ["prompt_per_mtok", "completion_per_mtok", "gpu_hourly", "storage_gb_month"] as const) {
    const v = num(e[k]);
    if (v !== null) prices[k] = v;
  }
  if (Object.keys(prices).length || full) out.prices = prices;
  put("budget_usd_monthly", num(e.budget_usd_monthly));
  put("budget_tokens_monthly", num(e.budget_tokens_monthly));
  return out;
}
