// The REST client: the API key lives in sessionStorage and goes out as a bearer token.

const KEY_STORAGE = "torpor.apiKey";

export function getKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

export function authHeaders(extra: Record<string, string> = {}): Record<string, string> {
  const key = getKey();
  return { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

export async function api<T = any>(path: string, init: RequestInit & { json?: unknown } = {}): Promise<T> {
  const { json, ...rest } = init;
  const headers = authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {});
  const res = await fetch(path, {
    ...rest,
    headers: { ...headers, ...(rest.headers as Record<string, string> | undefined) },
    body: json !== undefined ? JSON.stringify(json) : rest.body,
  });
  const text = await res.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!res.ok) {
    const msg = body?.error?.message ?? (typeof body === "string" && body ? body : res.statusText);
    throw new ApiError(res.status, msg);
  }
  return body as T;
}

let routeTable: Promise<RegExp[] | null> | null = null;

/** The server's GET routes, from its OpenAPI schema (null when that is unavailable). */
function routes(): Promise<RegExp[] | null> {
  // The schema needs a key like every API route; without one there is no table yet.
  if (getKey() === null) return Promise.resolve(null);
  routeTable ??= fetch("/openapi.json", { headers: authHeaders() })
    .then((r) => (r.ok ? r.json() : null))
    .then((schema) =>
      schema?.paths
        ? Object.entries(schema.paths as Record<string, Record<string, unknown>>)
            .filter(([, ops]) => "get" in ops)
            .map(([p]) => new RegExp(`^${p.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^/}]+\}/g, "[^/]+")}$`))
        : null,
    )
    .catch(() => null);
  return routeTable;
}

export async function hasRoute(path: string): Promise<boolean> {
  const table = await routes();
  const bare = path.split("?")[0];
  return table === null || table.some((re) => re.test(bare));
}

/** Like api(), but a route the server does not have yet, or any failure, yields null. */
export async function optional<T = any>(path: string): Promise<T | null> {
  if (!(await hasRoute(path))) return null;
  try {
    return await api<T>(path);
  } catch {
    return null;
  }
}

// -- shapes --------------------------------------------------------------------------------

export interface Worker {
  id: string;
  state: string;
  started_at: string | null;
  ready_at: string | null;
  stopped_at: string | null;
  inflight: number;
  // Admin view only.
  restarts?: number;
  reason?: string | null;
  exit_code?: number | null;
  pid?: number | null;
  port?: number | null;
  host?: string | null;
  spec_version?: number;
  gpu_ids?: number[];
  node?: string | null;
}

export interface Deployment {
  name: string;
  description: string;
  framework: string;
  model: string | null;
  min_workers: number;
  max_workers: number;
  concurrency: number;
  idle_timeout_s: number;
  wait_time_s: number;
  max_queue: number;
  // Admin view only: non-admin keys get the caller view, without these.
  options?: Record<string, any>;
  env?: Record<string, string>;
  framework_args?: string[];
  gpus?: number;
  state?: string;
  reason?: string | null;
  last_error?: Record<string, any> | null;
  status: string;
  endpoint: string;
  created_at: string | null;
  updated_at: string | null;
  ready_workers: number;
  desired_workers: number;
  queue: { waiting: number; inflight: number };
  workers: Worker[];
  [extra: string]: any;
}

export interface Me {
  id: string;
  name: string;
  admin: boolean;
  deployments: string[] | null;
  plan_tokens: number | null;
  budget_usd_monthly: number | null;
  budget_tokens_monthly: number | null;
  usage_month: { tokens: number; cost: number } | null;
}

export interface Usage {
  window: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  avg_latency_ms: number | null;
  avg_ttft_ms: number | null;
  cost: number;
  errors: number;
  deployment?: string;
}

export interface SeriesPoint {
  start: string;
  requests: number;
  errors?: number;
  request_rate: number;
  prompt_tokens: number;
  completion_tokens: number;
  tokens: number;
  avg_latency_ms: number | null;
  tokens_per_s: number | null;
  cost: number;
}

export interface FleetEntry {
  deployment: string;
  lifecycle: string;
  status: string;
  gpu_kind: string | null;
  gpu_memory_mb: number | null;
  total_requests: number | null;
  last_startup_s: number | null;
  wakes?: number;
  last_wake_ms?: number | null;
  workers: { ready: number; starting: number; total: number; sleeping?: number };
}

export interface Conversation {
  id: string;
  deployment: string;
  title: string;
  message_count: number;
  created_at: string;
  updated_at: string;
  system_prompt?: string;
  settings?: Record<string, any>;
  messages?: { role: string; content: string }[];
}

/** Who the key is: /api/me when the metering routes exist, else found out from /api/keys. */
export async function whoAmI(): Promise<Me> {
  const me = await optional<Me>("/api/me").catch(() => null);
  if (me && typeof me.admin === "boolean") return me;
  await api("/api/deployments"); // throws on a bad key
  let admin = false;
  try {
    await api("/api/keys");
    admin = true;
  } catch {
    admin = false;
  }
  return {
    id: "",
    name: admin ? "admin" : "key",
    admin,
    deployments: null,
    plan_tokens: null,
    budget_usd_monthly: null,
    budget_tokens_monthly: null,
    usage_month: null,
  };
}
