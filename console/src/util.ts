import type { Deployment, Worker } from "./api";

export type ModelType = "chat" | "code" | "embedding" | "video-generation";
export const MODEL_TYPES: ModelType[] = ["chat", "code", "embedding", "video-generation"];

const VENDORS: [RegExp, string][] = [
  [/smollm|huggingface|hf/i, "Hugging Face"],
  [/llama|meta/i, "Meta"],
  [/qwen/i, "Alibaba"],
  [/mistral|mixtral|codestral/i, "Mistral AI"],
  [/gemma/i, "Google"],
  [/phi/i, "Microsoft"],
  [/deepseek/i, "DeepSeek"],
  [/wan|ltx|hunyuan/i, "Video"],
  [/nomic|bge|e5-|minilm/i, "Embeddings"],
];

function pick(dep: Deployment, ...keys: string[]): any {
  for (const k of keys) {
    if (dep[k] !== undefined && dep[k] !== null && dep[k] !== "") return dep[k];
    const cat = dep.catalog;
    if (cat && cat[k] !== undefined && cat[k] !== null && cat[k] !== "") return cat[k];
  }
  return undefined;
}

/** Catalog fields: the deployment's own when the server has them, else derived defaults. */
export function catalogInfo(dep: Deployment): { vendor: string; displayName: string; type: ModelType } {
  const model = `${dep.model || ""} ${dep.name}`;
  let type = pick(dep, "type", "model_type", "task") as ModelType | undefined;
  if (!type || !MODEL_TYPES.includes(type)) {
    if (/embed|bge|e5-|minilm/i.test(model)) type = "embedding";
    else if (/video|wan2|ltx/i.test(model)) type = "video-generation";
    else if (/coder|code/i.test(model)) type = "code";
    else type = "chat";
  }
  let vendor = pick(dep, "vendor") as string | undefined;
  if (!vendor) {
    const slash = (dep.model || "").split("/");
    vendor = slash.length > 1 ? slash[0] : (VENDORS.find(([re]) => re.test(model))?.[1] ?? "Custom");
  }
  const displayName = (pick(dep, "display_name", "displayName", "title") as string | undefined) ?? dep.name;
  return { vendor, displayName, type };
}

export type Lifecycle = "active" | "warming_up" | "sleeping" | "cold" | "failed";

export function deriveLifecycle(dep: Deployment): Lifecycle {
  const live = dep.workers.filter((w) => ["provisioning", "healthy", "sleeping"].includes(w.state));
  switch (dep.status) {
    case "error":
      return "failed";
    case "starting":
      return "warming_up";
    case "ready":
    case "degraded":
      return live.length > 0 && live.every((w) => w.state === "sleeping") ? "sleeping" : "active";
    default:
      return "cold";
  }
}

export const LIFECYCLE_LABEL: Record<string, string> = {
  active: "Active",
  warming_up: "Warming Up",
  sleeping: "Sleeping",
  cold: "Cold",
  failed: "Failed",
};

export const STATUS_LABEL: Record<string, string> = {
  ready: "Ready",
  starting: "Starting",
  degraded: "Degraded",
  error: "Error",
  pending: "Pending",
  scaled_to_zero: "Scaled to zero",
};

export function tone(value: string): string {
  if (["ready", "active", "healthy", "completed", "succeeded", "done"].includes(value)) return "ok";
  if (["starting", "warming_up", "provisioning", "degraded", "pending", "queued", "processing", "draining", "in_progress"].includes(value)) return "warn";
  if (["error", "failed", "cancelled"].includes(value)) return "bad";
  return "idle";
}

export const NAME_RULE =
  "1-63 characters of lowercase letters, digits and hyphens; no hyphen first or last";
const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function nameError(name: string, taken: string[] = []): string | null {
  if (!name) return "A name is required";
  if (name.length > 63) return "At most 63 characters";
  if (/[A-Z]/.test(name)) return "Use lowercase letters only";
  if (!/^[a-z0-9-]*$/.test(name)) return "Only lowercase letters, digits and hyphens";
  if (name.startsWith("-") || name.endsWith("-")) return "No hyphen first or last";
  if (!NAME_RE.test(name)) return NAME_RULE;
  if (taken.includes(name)) return `A deployment named ${name} already exists`;
  return null;
}

export function isFailing(w: Worker): boolean {
  return w.state === "failed" || (w.state === "provisioning" && (w.restarts ?? 0) > 0);
}

/** Failing workers first, then starting ones, then the rest; newest first within a group. */
export function workersFailingFirst(workers: Worker[]): Worker[] {
  const rank = (w: Worker) => (w.state === "failed" ? 0 : w.state === "provisioning" ? 1 : ["healthy", "sleeping"].includes(w.state) ? 2 : 3);
  return [...workers].sort((a, b) => rank(a) - rank(b) || (b.started_at ?? "").localeCompare(a.started_at ?? ""));
}

export function fmtNum(n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtMs(n: number | null | undefined): string {
  if (n === null || n === undefined) return "–";
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
}

/** Money as people read it: cents for amounts of a cent or more, two significant digits
 * below that (never a dozen decimals), "$0.00" for nothing. */
export function fmtCost(n: number | null | undefined): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a === 0) return "$0.00";
  if (a >= 0.01) return `$${n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  if (a < 0.0001) return n < 0 ? "-<$0.0001" : "<$0.0001";
  return `$${Number(n.toPrecision(2))}`;
}

/** "5m ago", "2h ago"; "never" for no time. */
export function fmtAgo(iso: string | null | undefined): string {
  return iso ? `${fmtAge(iso)} ago` : "never";
}

export function fmtAge(iso: string | null | undefined): string {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** Bytes in decimal units, as disks are sold: "98.4 MB", "100 GB". */
export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = i === 0 || v >= 100 ? 0 : 1;
  return `${n < 0 ? "-" : ""}${Number(v.toFixed(digits))} ${units[i]}`;
}

/** A duration in seconds as "45s", "12m 3s", "5h 2m", "3d 4h". */
export function fmtDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** How long a worker has been up (since it started); for an ended one, how long it ran. */
export function workerUptime(w: Worker, now: number): string {
  if (!w.started_at) return "–";
  const start = new Date(w.started_at).getTime();
  const end = w.stopped_at ? new Date(w.stopped_at).getTime() : now;
  const text = fmtDuration((end - start) / 1000);
  return w.stopped_at ? `ran ${text}` : text;
}

/** A worker's address as the gateway reaches it (admin view only). */
export function workerEndpoint(w: Worker): string | null {
  if (!w.host || !w.port) return null;
  const host = w.host.includes(":") ? `[${w.host}]` : w.host;
  const node = w.node && w.node !== "local" ? ` on ${w.node}` : "";
  return `http://${host}:${w.port}${node}`;
}

const SETUP_LABEL: Record<string, string> = {
  starting: "starting",
  filesystem_created: "storage created",
  downloading_model: "downloading the model",
  model_downloaded: "model downloaded",
  running: "done (serving)",
  failed: "failed",
  deleting: "deleting",
  cleaning: "cleaning up",
  deleted: "deleted",
};

/** The setup pipeline's state in words ("running" means the setup is done). */
export function setupLabel(state: string): string {
  return SETUP_LABEL[state] ?? state.replace(/_/g, " ");
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "–";
  return new Date(iso).toLocaleString();
}

export function baseUrl(): string {
  return `${location.origin}/v1`;
}

export function curlSnippet(model: string, type: ModelType): string {
  const url = baseUrl();
  if (type === "embedding") {
    return `curl ${url}/embeddings \\\n  -H "Authorization: Bearer $TORPOR_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${model}", "input": "Hello!"}'`;
  }
  if (type === "video-generation") {
    // A job (vLLM-Omni's Videos API): create it, poll it, then download the clip.
    return `curl ${url}/videos \\\n  -H "Authorization: Bearer $TORPOR_API_KEY" \\\n  -F model=${model} -F prompt="A cat surfing a wave" -F seconds=4\n# then GET ${url}/videos/<id> until "completed", and GET ${url}/videos/<id>/content -o clip.mp4`;
  }
  return `curl ${url}/chat/completions \\\n  -H "Authorization: Bearer $TORPOR_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello!"}]}'`;
}

export function pythonSnippet(model: string, type: ModelType): string {
  const head = `from openai import OpenAI\n\nclient = OpenAI(base_url="${baseUrl()}", api_key=TORPOR_API_KEY)\n`;
  if (type === "embedding") {
    return `${head}vec = client.embeddings.create(model="${model}", input="Hello!")\nprint(len(vec.data[0].embedding))`;
  }
  if (type === "video-generation") {
    return `${head}video = client.videos.create_and_poll(model="${model}", prompt="A cat surfing a wave", seconds="4")\nif video.status == "completed":\n    client.videos.download_content(video.id).write_to_file("clip.mp4")\nelse:\n    print(video.error)`;
  }
  return `${head}reply = client.chat.completions.create(\n    model="${model}", messages=[{"role": "user", "content": "Hello!"}]\n)\nprint(reply.choices[0].message.content)`;
}

// -- <think> segments ---------------------------------------------------------------------

export interface Segment {
  kind: "think" | "answer";
  text: string;
  open: boolean; // a think segment still being written
}

export function splitThink(text: string): Segment[] {
  const out: Segment[] = [];
  let rest = text;
  while (rest) {
    const start = rest.indexOf("<think>");
    if (start < 0) {
      out.push({ kind: "answer", text: rest, open: false });
      break;
    }
    if (start > 0) out.push({ kind: "answer", text: rest.slice(0, start), open: false });
    const after = rest.slice(start + 7);
    const end = after.indexOf("</think>");
    if (end < 0) {
      out.push({ kind: "think", text: after, open: true });
      break;
    }
    out.push({ kind: "think", text: after.slice(0, end), open: false });
    rest = after.slice(end + 8);
  }
  return out;
}

export function cleanAnswer(text: string): string {
  return splitThink(text)
    .filter((s) => s.kind === "answer")
    .map((s) => s.text)
    .join("")
    .trim();
}

// -- SSE -------------------------------------------------------------------------------------

/** Read an OpenAI-style event stream; `onEvent` gets each JSON payload, `onComment` keep-alives,
 * `onRaw` every chunk of text as it arrived (for the exact response). */
export async function readSSE(
  body: ReadableStream<Uint8Array>,
  onEvent: (data: any) => void,
  onComment: () => void,
  onRaw: (text: string) => void = () => {},
): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    onRaw(text);
    buf += text;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (line.startsWith(":")) onComment();
      else if (line.startsWith("data:")) {
        const data = line.slice(5).trim();
        if (data && data !== "[DONE]") {
          let parsed: unknown;
          try {
            parsed = JSON.parse(data);
          } catch {
            continue; /* a partial or foreign line: skip */
          }
          onEvent(parsed);
        }
      }
    }
  }
}

/** The message of an error event in a stream (`data: {"error": {...}}`), else null. */
export function streamError(data: any): string | null {
  const err = data?.error;
  if (!err) return null;
  return typeof err === "string" ? err : String(err.message ?? JSON.stringify(err));
}

export function maskValue(key: string, value: string): string {
  return /key|token|secret|password|passwd|credential|auth/i.test(key) ? "••••••••" : value;
}

export function usageTone(fraction: number): "ok" | "warn" | "bad" {
  return fraction < 0.7 ? "ok" : fraction < 0.9 ? "warn" : "bad";
}
