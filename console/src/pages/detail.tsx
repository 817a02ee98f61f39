import { useEffect, useRef, useState } from "preact/hooks";
import { api, authHeaders, optional, type Deployment, type Me } from "../api";
import { Badge, CopyButton, Empty, ErrorBox, hourLabel, LineChart, Modal, Stat, usePoll } from "../components";
import { fmtAge, fmtMs, fmtNum, fmtTime, STATUS_LABEL, workersFailingFirst } from "../util";
import { ConnectModal, logsHref } from "./deployments";
import { cleanOptions, envText, extrasOf, extrasToSpec, frameworkByName, loadFrameworks, optionValues, parseArgs, parseEnv, type Framework, type OptionValues } from "./frameworks";
import { Overview } from "./overview";
import { ExtrasInputs, OptionInputs } from "./specfields";

const TABS: [string, string, boolean][] = [
  ["overview", "Overview", false],
  ["workers", "Workers", false],
  ["metrics", "Metrics", false],
  ["logs", "Logs", true],
  ["async", "Async queue", false],
  ["settings", "Settings", true],
];

export function DeploymentDetail({ name, tab, me }: { name: string; tab: string; me: Me }) {
  const [polled, error, reload] = usePoll(() => api<Deployment>(`/api/deployments/${encodeURIComponent(name)}`), 2000, [name]);
  // After navigating from another deployment, the previous one's data must not show (or
  // seed the settings form) until this one's has arrived.
  const dep = polled && polled.name === name ? polled : null;
  const [connect, setConnect] = useState(false);
  const worker = new URLSearchParams(location.hash.split("?")[1] ?? "").get("worker");
  const tabs = TABS.filter(([, , admin]) => !admin || me.admin);
  const current = tabs.some(([id]) => id === tab) ? tab : "overview";
  return (
    <section>
      <div class="page-head">
        <div>
          <a class="muted small" href="#/deployments">
            ← Deployments
          </a>
          <h1>{name}</h1>
          {dep && <p class="muted">{dep.description || `${dep.framework} · ${dep.model || (dep.framework === "custom" ? "custom server" : "a model on the server")}`}</p>}
        </div>
        <div class="row">
          {dep && <Badge value={dep.status} label={STATUS_LABEL[dep.status] ?? dep.status} testid="status" />}
          {dep && (
            <button type="button" class="btn" onClick={() => setConnect(true)}>
              Connect
            </button>
          )}
        </div>
      </div>
      <ErrorBox error={error} />
      <div class="tabs" role="tablist">
        {tabs.map(([id, label]) => (
          <a role="tab" aria-selected={current === id} class={`tab ${current === id ? "on" : ""}`} href={`#/deployments/${encodeURIComponent(name)}/${id}`}>
            {label}
          </a>
        ))}
      </div>
      {dep && current === "overview" && <Overview dep={dep} admin={me.admin} />}
      {dep && current === "workers" && <Workers dep={dep} admin={me.admin} />}
      {current === "metrics" && <Metrics name={name} />}
      {current === "logs" && <Logs name={name} worker={worker} workers={dep?.workers.map((w) => w.id) ?? []} />}
      {current === "async" && <AsyncQueue name={name} />}
      {dep && current === "settings" && <Settings key={dep.name} dep={dep} onSaved={reload} />}
      {connect && dep && <ConnectModal dep={dep} onClose={() => setConnect(false)} />}
    </section>
  );
}

function Workers({ dep, admin }: { dep: Deployment; admin: boolean }) {
  const workers = workersFailingFirst(dep.workers);
  if (workers.length === 0) return <Empty>No workers: the deployment is scaled to zero.</Empty>;
  return (
    <div class="panel">
      <div class="table-wrap">
        <table class="table stack" data-testid="workers">
          <thead>
            <tr>
              <th>Worker</th>
              <th>Status</th>
              <th class="hide-sm">Node / host</th>
              <th class="hide-sm">Restarts</th>
              <th class="hide-sm">Age</th>
              <th>Reason</th>
              {admin && <th />}
            </tr>
          </thead>
          <tbody>
            {workers.map((w) => (
              <tr class={`worker ${w.state}`} data-worker={w.id} data-state={w.state}>
                <td class="mono small">{w.id}</td>
                <td>
                  <Badge value={w.state} />
                </td>
                <td class="hide-sm mono small">
                  {w.node ?? w.host ?? "local"}
                  {w.port ? `:${w.port}` : ""}
                  {w.pid ? ` (pid ${w.pid})` : ""}
                </td>
                <td class="hide-sm">{w.restarts}</td>
                <td class="hide-sm">{fmtAge(w.started_at)}</td>
                <td class="reason" data-testid="reason">
                  {w.reason ?? (w.exit_code !== null ? `exit code ${w.exit_code}` : "–")}
                </td>
                {admin && (
                  <td>
                    <a href={logsHref(dep.name, w.id)}>Logs</a>
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}

interface Metrics {
  window: string;
  total_requests: number;
  latency_ms: { p50: number | null; p95: number | null; p99: number | null };
  ttft_ms?: { p50: number | null; p95: number | null; p99: number | null };
  rps: { start: string; value: number }[];
  latency: { start: string; p50: number | null; p95: number | null }[];
}

function Metrics({ name }: { name: string }) {
  const [win, setWin] = useState("1h");
  // Tagged with its window, so a window still loading is not shown with the last one's data.
  const [loaded, error] = usePoll(
    () => optional<Metrics>(`/api/deployments/${encodeURIComponent(name)}/metrics?window=${win}`).then((data) => ({ win, data })),
    10000,
    [name, win],
  );
  const current = loaded && loaded.win === win ? loaded : null;
  const loading = !error && !current;
  const m = current?.data ?? null;
  return (
    <div>
      <div class="toolbar">
        <div class="chips" role="group" aria-label="Window">
          {["1h", "6h", "24h"].map((w) => (
            <button type="button" class={`chip ${win === w ? "on" : ""}`} onClick={() => setWin(w)}>
              {w}
            </button>
          ))}
        </div>
      </div>
      {m ? (
        <>
          <div class="panel stats">
            <Stat label="Total requests" value={fmtNum(m.total_requests)} raw={m.total_requests} testid="metric-total" />
            <Stat label="P50 latency" value={fmtMs(m.latency_ms?.p50)} raw={m.latency_ms?.p50} />
            <Stat label="P95 latency" value={fmtMs(m.latency_ms?.p95)} raw={m.latency_ms?.p95} />
            <Stat label="P99 latency" value={fmtMs(m.latency_ms?.p99)} raw={m.latency_ms?.p99} />
          </div>
          <div class="charts">
            <LineChart title="Requests per second" labels={(m.rps ?? []).map((p) => hourLabel(p.start))} series={[{ label: "req/s", data: (m.rps ?? []).map((p) => p.value) }]} />
            <LineChart
              title="Latency (ms)"
              labels={(m.latency ?? []).map((p) => hourLabel(p.start))}
              series={[
                { label: "P50", data: (m.latency ?? []).map((p) => p.p50) },
                { label: "P95", data: (m.latency ?? []).map((p) => p.p95) },
              ]}
            />
          </div>
        </>
      ) : loading ? (
        <div class="empty" data-testid="metrics-loading" aria-busy="true">
          Loading metrics…
        </div>
      ) : (
        <>
          <ErrorBox error={error} />
          <Empty>No metrics for this deployment.</Empty>
        </>
      )}
    </div>
  );
}

function Logs({ name, worker, workers }: { name: string; worker: string | null; workers: string[] }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [live, setLive] = useState(true);
  const box = useRef<HTMLPreElement>(null);
  useEffect(() => {
    if (!live) return;
    const ctrl = new AbortController();
    setText("");
    setError(null);
    const q = new URLSearchParams({ follow: "1", tail: "300" });
    if (worker) q.set("worker", worker);
    (async () => {
      try {
        const res = await fetch(`/api/deployments/${encodeURIComponent(name)}/logs?${q}`, { headers: authHeaders(), signal: ctrl.signal });
        if (!res.ok || !res.body) {
          const body = await res.json().catch(() => null);
          throw new Error(body?.error?.message ?? `HTTP ${res.status}`);
        }
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const chunk = dec.decode(value, { stream: true });
          setText((t) => (t + chunk).slice(-200_000));
        }
      } catch (e) {
        if ((e as Error).name !== "AbortError") setError((e as Error).message);
      }
    })();
    return () => ctrl.abort();
  }, [name, worker, live]);
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [text]);
  return (
    <div class="panel">
      <div class="toolbar">
        <select
          aria-label="Worker"
          value={worker ?? ""}
          onChange={(e) => {
            const w = (e.target as HTMLSelectElement).value;
            location.hash = logsHref(name, w || undefined);
          }}
        >
          <option value="">All workers</option>
          {workers.map((w) => (
            <option value={w}>{w}</option>
          ))}
        </select>
        <label class="inline">
          <input type="checkbox" checked={live} onChange={(e) => setLive((e.target as HTMLInputElement).checked)} /> Live tail
        </label>
      </div>
      <ErrorBox error={error} />
      <pre class="logs" ref={box} data-testid="logs">
        {text || "Waiting for log lines…"}
      </pre>
    </div>
  );
}

interface AsyncTask {
  id: string;
  status: string;
  method?: string;
  path?: string;
  created_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  attempts?: number;
  status_code?: number | null;
  request?: unknown;
  response?: unknown;
  error: { message?: string; type?: string; code?: string } | string | null;
}

// The server's async statuses (GET /api/deployments/{name}/async?status=...).
export const ASYNC_STATUSES = ["pending", "processing", "completed", "failed", "cancelled"];
const OPEN = ["pending", "processing"];

function pretty(value: unknown): string {
  if (value === null || value === undefined) return "–";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function TaskDetail({ id, onClose, onChanged }: { id: string; onClose: () => void; onChanged: () => void }) {
  const [task, error, reload] = usePoll(() => api<AsyncTask>(`/v1/requests/${encodeURIComponent(id)}`), 2000, [id]);
  const [busy, setBusy] = useState(false);
  const [cancelError, setCancelError] = useState<string | null>(null);
  const cancel = async () => {
    setBusy(true);
    setCancelError(null);
    try {
      await api(`/v1/requests/${encodeURIComponent(id)}`, { method: "DELETE" });
      reload();
      onChanged();
    } catch (e) {
      setCancelError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const err = task?.error;
  return (
    <Modal title={`Task ${id}`} onClose={onClose}>
      <ErrorBox error={error ?? cancelError} />
      {!task ? (
        <Empty>Loading…</Empty>
      ) : (
        <div data-testid="task-detail" data-status={task.status}>
          <div class="kv">
            <span>Status</span>
            <span>
              <Badge value={task.status} /> {task.status_code ? <span class="muted small">HTTP {task.status_code}</span> : null}
            </span>
            <span>Route</span>
            <span class="mono">
              {task.method} {task.path}
            </span>
            <span>Created</span>
            <span>{fmtTime(task.created_at)}</span>
            <span>Finished</span>
            <span>{fmtTime(task.finished_at)}</span>
            <span>Attempts</span>
            <span>{task.attempts ?? "–"}</span>
          </div>
          <div class="panel-head">
            <h4>Request</h4>
            <CopyButton text={pretty(task.request)} label="Copy request" />
          </div>
          <pre class="code" data-testid="task-request">
            {pretty(task.request)}
          </pre>
          <h4>{err ? "Error" : "Response"}</h4>
          <pre class="code" data-testid="task-response">
            {err ? pretty(err) : task.response !== null && task.response !== undefined ? pretty(task.response) : OPEN.includes(task.status) ? "Not finished yet." : "–"}
          </pre>
          {OPEN.includes(task.status) && (
            <div class="wizard-nav">
              <button type="button" class="btn danger" disabled={busy} onClick={cancel}>
                {busy ? "Cancelling…" : "Cancel task"}
              </button>
            </div>
          )}
        </div>
      )}
    </Modal>
  );
}

function AsyncQueue({ name }: { name: string }) {
  const [status, setStatus] = useState("");
  const [sel, setSel] = useState<string | null>(null);
  const [q, error, reload] = usePoll(
    () =>
      api<{ data: AsyncTask[]; queue_depth: number; processing: number; counts?: Record<string, number> }>(
        `/api/deployments/${encodeURIComponent(name)}/async${status ? `?status=${status}` : ""}`,
      ),
    3000,
    [name, status],
  );
  return (
    <div>
      <div class="toolbar">
        <select aria-label="Status filter" value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
          <option value="">All statuses</option>
          {ASYNC_STATUSES.map((s) => (
            <option value={s}>
              {s}
              {q?.counts?.[s] !== undefined ? ` (${q.counts[s]})` : ""}
            </option>
          ))}
        </select>
      </div>
      <ErrorBox error={error} />
      {q ? (
        <>
          <div class="panel stats">
            <Stat label="Queue depth" value={fmtNum(q.queue_depth)} raw={q.queue_depth} />
            <Stat label="Processing" value={fmtNum(q.processing)} raw={q.processing} />
          </div>
          <div class="panel">
            {q.data.length === 0 ? (
              <Empty>{status ? `No ${status} tasks.` : "No tasks."}</Empty>
            ) : (
              <div class="table-wrap">
                <table class="table stack" data-testid="async-tasks">
                  <thead>
                    <tr>
                      <th>Task</th>
                      <th>Status</th>
                      <th>Created</th>
                      <th>Finished</th>
                    </tr>
                  </thead>
                  <tbody>
                    {q.data.map((t) => (
                      <tr class="clickable" data-task={t.id} data-status={t.status} onClick={() => setSel(t.id)}>
                        <td class="mono small" data-label="Task">
                          {t.id}
                        </td>
                        <td data-label="Status">
                          <Badge value={t.status} />
                        </td>
                        <td data-label="Created">{fmtTime(t.created_at)}</td>
                        <td data-label="Finished">{fmtTime(t.finished_at)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
        </>
      ) : (
        !error && <Empty>Loading…</Empty>
      )}
      {sel && <TaskDetail id={sel} onClose={() => setSel(null)} onChanged={reload} />}
    </div>
  );
}

/** A value with null object fields dropped: `{a: null}` and `{}` are the same setting. */
function withoutNulls(v: unknown): unknown {
  if (v === undefined) return null;
  if (v === null || typeof v !== "object" || Array.isArray(v)) return v;
  const entries = Object.entries(v as Record<string, unknown>)
    .filter(([, x]) => x !== null && x !== undefined)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, x]) => [k, withoutNulls(x)]);
  return Object.fromEntries(entries);
}

const ROLLING = ["model", "framework", "framework_args", "env", "gpus", "options", "accelerator", "gpu_type", "source"];

function Settings({ dep: shown, onSaved }: { dep: Deployment; onSaved: () => void }) {
  // The form starts from the deployment as it is now, not from the last poll.
  const [loaded, error] = usePoll(
    () => Promise.all([loadFrameworks(), api<Deployment>(`/api/deployments/${encodeURIComponent(shown.name)}`)]),
    0,
    [shown.name],
  );
  if (!loaded) return error ? <ErrorBox error={error} /> : <Empty>Loading…</Empty>;
  const [frameworks, dep] = loaded;
  return <SettingsForm key={`${dep.name}:${dep.updated_at}`} dep={dep} frameworks={frameworks} onSaved={onSaved} />;
}

function SettingsForm({ dep, frameworks, onSaved }: { dep: Deployment; frameworks: Framework[]; onSaved: () => void }) {
  const initial = () => ({
    description: dep.description,
    framework: dep.framework,
    model: dep.model ?? "",
    min_workers: String(dep.min_workers),
    max_workers: String(dep.max_workers),
    concurrency: String(dep.concurrency),
    idle_timeout_s: String(dep.idle_timeout_s),
    gpus: String(dep.gpus ?? 0),
    // Secret-looking values stay masked; a masked value left as is keeps the current one.
    env: envText(dep.env ?? {}),
    framework_args: (dep.framework_args ?? []).join(" "),
  });
  const [form, setForm] = useState(initial);
  const [options, setOptions] = useState<OptionValues>(() => optionValues(frameworkByName(frameworks, dep.framework), dep.options ?? {}));
  const [extras, setExtras] = useState(() => extrasOf(dep));
  const [confirm, setConfirm] = useState<Record<string, unknown> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  // A refusal belongs to the values it was about: any change clears it.
  useEffect(() => setError(null), [JSON.stringify(form), JSON.stringify(options), JSON.stringify(extras)]);
  const fw = frameworkByName(frameworks, form.framework);

  const number = (text: string) => {
    const n = Number(text.trim());
    return text.trim() && Number.isFinite(n) ? n : text;
  };
  const change = (): Record<string, unknown> => {
    const next: Record<string, unknown> = {
      description: form.description,
      framework: form.framework,
      model: form.model,
      options: cleanOptions(fw, options),
      min_workers: number(form.min_workers),
      max_workers: number(form.max_workers),
      concurrency: number(form.concurrency),
      idle_timeout_s: number(form.idle_timeout_s),
      gpus: number(form.gpus),
      env: parseEnv(form.env, dep.env ?? {}),
      framework_args: parseArgs(form.framework_args),
      ...extrasToSpec(extras, true, dep),
    };
    const patch: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(next)) if (JSON.stringify(withoutNulls(v)) !== JSON.stringify(withoutNulls(dep[k]))) patch[k] = v;
    return patch;
  };

  const apply = async (patch: Record<string, unknown>) => {
    setConfirm(null);
    setError(null);
    try {
      await api(`/api/deployments/${encodeURIComponent(dep.name)}`, { method: "PATCH", json: patch });
      setSaved(true);
      window.setTimeout(() => setSaved(false), 2500);
      onSaved();
    } catch (e) {
      setError((e as Error).message);
    }
  };

  const save = (e: Event) => {
    e.preventDefault();
    const patch = change();
    if (Object.keys(patch).length === 0) return setError("Nothing changed.");
    if (Object.keys(patch).some((k) => ROLLING.includes(k))) setConfirm(patch);
    else apply(patch);
  };

  const field = (key: keyof ReturnType<typeof initial>, label: string, numeric = false) => (
    <label>
      {label}
      <input name={key} type="text" inputMode={numeric ? "decimal" : "text"} value={String(form[key])} onInput={(e) => setForm({ ...form, [key]: (e.target as HTMLInputElement).value })} />
    </label>
  );
  return (
    <form class="panel form" onSubmit={save}>
      <label>
        Description
        <textarea name="description" rows={2} value={form.description} onInput={(e) => setForm({ ...form, description: (e.target as HTMLTextAreaElement).value })} />
      </label>
      <div class="form-sub">Scaling (applies at once)</div>
      <div class="grid-form">
        {field("min_workers", "Min workers", true)}
        {field("max_workers", "Max workers", true)}
        {field("concurrency", "Concurrency", true)}
        {field("idle_timeout_s", "Idle timeout (s)", true)}
      </div>
      <ExtrasInputs value={extras} onChange={setExtras} gpus={fw.gpus} />
      <div class="form-sub">Engine (a change restarts the workers)</div>
      <label>
        Framework
        <select
          name="framework"
          value={form.framework}
          onChange={(e) => {
            setForm({ ...form, framework: (e.target as HTMLSelectElement).value });
            setOptions({});
          }}
        >
          {frameworks
            .filter((f) => f.creatable || f.name === dep.framework)
            .map((f) => (
              <option value={f.name}>{f.label}</option>
            ))}
        </select>
      </label>
      {field("model", fw.model_label)}
      {fw.gpus && field("gpus", "GPUs per worker", true)}
      <OptionInputs fw={fw} values={options} onChange={setOptions} />
      <label>
        Environment (KEY=value, one a line; masked values are kept)
        <textarea name="env" class="mono" rows={3} value={form.env} onInput={(e) => setForm({ ...form, env: (e.target as HTMLTextAreaElement).value })} />
      </label>
      {field("framework_args", "Extra engine arguments")}
      <ErrorBox error={error} />
      <div class="wizard-nav">
        <button
          type="button"
          class="btn ghost"
          onClick={() => {
            setForm(initial());
            setOptions(optionValues(frameworkByName(frameworks, dep.framework), dep.options ?? {}));
            setExtras(extrasOf(dep));
          }}
        >
          Reset
        </button>
        <button type="submit" class="btn primary">
          Save changes
        </button>
        {saved && <span class="ok-text">Saved.</span>}
      </div>
      {confirm && (
        <Modal title="Restart workers?" onClose={() => setConfirm(null)}>
          <p>
            Changing <strong>{Object.keys(confirm).filter((k) => ROLLING.includes(k)).join(", ")}</strong> rolls the workers over: new workers start with the new settings and the old ones
            drain once those are ready.
          </p>
          <div class="wizard-nav">
            <button type="button" class="btn ghost" onClick={() => setConfirm(null)}>
              Cancel
            </button>
            <button type="button" class="btn danger" onClick={() => apply(confirm)}>
              Restart workers and save
            </button>
          </div>
        </Modal>
      )}
    </form>
  );
}
