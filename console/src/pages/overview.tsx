import { api, type Deployment, type Worker } from "../api";
import { Badge, UsageBar, usePoll } from "../components";
import { catalogInfo, deriveLifecycle, fmtBytes, fmtTime, LIFECYCLE_LABEL, maskValue, setupLabel, STATUS_LABEL, workerEndpoint, workersFailingFirst, workerUptime } from "../util";
import { logsHref, workersText } from "./deployments";

/** The overview tab: status (with the last log lines of a failing worker), resources, the
 * workers, the volume, and for admins the engine command, environment and events. */
export function Overview({ dep, admin }: { dep: Deployment; admin: boolean }) {
  const [events] = usePoll(() => api<{ data: { at: string; kind: string; state: string; message: string }[] }>(`/api/deployments/${encodeURIComponent(dep.name)}/events`), 5000, [dep.name]);
  const info = catalogInfo(dep);
  const life = deriveLifecycle(dep);
  const command = dep.command ?? dep.options?.command;
  return (
    <div class="overview">
      <div class="two">
        <div class="panel">
          <h3>Status</h3>
          <div class="kv">
            <span>Serving</span>
            <span>
              <Badge value={dep.status} label={STATUS_LABEL[dep.status] ?? dep.status} />
            </span>
            <span>Lifecycle</span>
            <span>
              <Badge value={life} label={LIFECYCLE_LABEL[life]} />
            </span>
            {dep.state !== undefined && (
              <>
                <span>Setup</span>
                <span data-testid="setup">{setupLabel(dep.state)}</span>
              </>
            )}
            {dep.reason !== undefined && (
              <>
                <span>Reason</span>
                <span data-testid="reason">{dep.reason ?? "–"}</span>
              </>
            )}
            <span>Workers</span>
            <span>{workersText(dep)}</span>
            <span>Queue</span>
            <span>
              {dep.queue.inflight} in flight, {dep.queue.waiting} waiting
            </span>
            <span>Endpoint</span>
            <span class="mono">
              {location.origin}
              {dep.endpoint}
            </span>
          </div>
        </div>
        <div class="panel">
          <h3>Resources</h3>
          <div class="kv">
            <span>Type</span>
            <span>{info.type}</span>
            {dep.gpus !== undefined && (
              <>
                <span>GPUs per worker</span>
                <span>{dep.gpus || "none (CPU)"}</span>
              </>
            )}
            <span>Workers</span>
            <span>
              {dep.min_workers}–{dep.max_workers}
            </span>
            <span>Concurrency</span>
            <span>{dep.concurrency}</span>
            <span>Idle timeout</span>
            <span>{dep.idle_timeout_s} s</span>
            <span>Wait time</span>
            <span>{dep.wait_time_s} s</span>
            <span>Max queue</span>
            <span>{dep.max_queue}</span>
          </div>
        </div>
      </div>
      <LastError dep={dep} admin={admin} />
      <WorkersCard dep={dep} admin={admin} />
      {dep.storage && <VolumeCard dep={dep} />}
      {dep.env !== undefined && (
        <div class="two">
          <div class="panel">
            <h3>Command and arguments</h3>
            <div class="kv">
              <span>Framework</span>
              <span>{dep.framework}</span>
              <span>Model</span>
              <span class="mono">{dep.model || "–"}</span>
              {command && (
                <>
                  <span>Command</span>
                  <span class="mono">{Array.isArray(command) ? command.join(" ") : String(command)}</span>
                </>
              )}
              <span>Arguments</span>
              <span class="mono">{dep.framework_args?.length ? dep.framework_args.join(" ") : "–"}</span>
              {Object.entries(dep.options ?? {})
                .filter(([k]) => k !== "command")
                .map(([k, v]) => (
                  <>
                    <span>{k}</span>
                    <span class="mono">{typeof v === "string" ? v : JSON.stringify(v)}</span>
                  </>
                ))}
            </div>
          </div>
          <div class="panel">
            <h3>Environment</h3>
            {Object.keys(dep.env ?? {}).length === 0 ? (
              <div class="muted">No variables.</div>
            ) : (
              <div class="kv" data-testid="env">
                {Object.entries(dep.env ?? {}).map(([k, v]) => (
                  <>
                    <span class="mono">{k}</span>
                    <span class="mono">{maskValue(k, v)}</span>
                  </>
                ))}
              </div>
            )}
          </div>
        </div>
      )}
      <div class="panel">
        <h3>Events</h3>
        {(events?.data ?? []).length === 0 ? (
          <div class="muted">No events.</div>
        ) : (
          <ul class="events">
            {[...(events?.data ?? [])].reverse().slice(0, 50).map((e) => (
              <li>
                <span class="muted small">{fmtTime(e.at)}</span> <Badge value={e.state} /> {e.message ?? ""}
              </li>
            ))}
          </ul>
        )}
      </div>
    </div>
  );
}

/** A worker that failed recently (admin view's `last_error`): what it said last. Shown while
 * the deployment is failing (a crash loop, or no worker healthy), not after it recovered. */
function LastError({ dep, admin }: { dep: Deployment; admin: boolean }) {
  const err = dep.last_error;
  const failing = dep.status === "error" || dep.status === "degraded" || dep.workers.some((w) => w.state === "failed");
  if (!err || !failing) return null;
  const tail: string[] = Array.isArray(err.log_tail) ? err.log_tail : [];
  return (
    <div class="panel last-error" data-testid="last-error">
      <div class="panel-head">
        <h3>Last worker failure</h3>
        {admin && err.worker && <a href={logsHref(dep.name, err.worker)}>All logs</a>}
      </div>
      <div class="kv">
        <span>Worker</span>
        <span class="mono">{err.worker ?? "–"}</span>
        <span>Exit code</span>
        <span>{err.exit_code ?? "–"}</span>
        <span>Reason</span>
        <span>{err.reason ?? "–"}</span>
        <span>At</span>
        <span>{fmtTime(err.at)}</span>
      </div>
      <h4>Last log lines</h4>
      <pre class="code tail" data-testid="log-tail">
        {tail.length ? tail.join("\n") : "The worker wrote nothing."}
      </pre>
    </div>
  );
}

function WorkersCard({ dep, admin }: { dep: Deployment; admin: boolean }) {
  const workers = workersFailingFirst(dep.workers);
  const now = Date.now();
  return (
    <div class="panel">
      <div class="panel-head">
        <h3>Workers</h3>
        <span class="muted small">{workersText(dep)}</span>
      </div>
      {workers.length === 0 ? (
        <div class="muted" data-testid="no-workers">
          No workers: scaled to zero. The next request starts one.
        </div>
      ) : (
        <div class="table-wrap">
          <table class="table stack" data-testid="overview-workers">
            <thead>
              <tr>
                <th>Worker</th>
                <th>State</th>
                <th>Uptime</th>
                <th>In flight</th>
                {admin && <th>Restarts</th>}
                {admin && <th>Endpoint</th>}
                {admin && <th>GPUs</th>}
              </tr>
            </thead>
            <tbody>
              {workers.map((w: Worker) => (
                <tr class={`worker ${w.state}`} data-worker={w.id} data-state={w.state}>
                  <td class="mono small" data-label="Worker">
                    {w.id}
                  </td>
                  <td data-label="State">
                    <Badge value={w.state} />
                  </td>
                  <td data-label="Uptime" data-testid="uptime">
                    {workerUptime(w, now)}
                  </td>
                  <td data-label="In flight" data-testid="inflight">
                    {w.inflight}
                  </td>
                  {admin && (
                    <td data-label="Restarts" data-testid="restarts">
                      {w.restarts ?? 0}
                    </td>
                  )}
                  {admin && (
                    <td class="mono small" data-label="Endpoint" data-testid="worker-endpoint">
                      {workerEndpoint(w) ?? "–"}
                    </td>
                  )}
                  {admin && (
                    <td data-label="GPUs" data-testid="gpu-ids">
                      {w.gpu_ids?.length ? w.gpu_ids.join(", ") : "none (CPU)"}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

/** The deployment's volume (admins): where it lives, and the model's bytes against the
 * `storage_gb` limit. */
function VolumeCard({ dep }: { dep: Deployment }) {
  const storage = dep.storage as { dir?: string | null; limit_gb?: number | null; model_bytes?: number | null };
  const used = storage.model_bytes ?? 0;
  const limit = storage.limit_gb ? storage.limit_gb * 1e9 : null;
  return (
    <div class="panel" data-testid="volume">
      <h3>Volume</h3>
      <div class="kv">
        <span>Directory</span>
        <span class="mono" data-testid="volume-dir">
          {storage.dir ?? "–"}
        </span>
        <span>Model files</span>
        <span class="mono">{dep.model_path ?? "–"}</span>
        <span>Model size</span>
        <span data-testid="model-size">{storage.model_bytes ? fmtBytes(storage.model_bytes) : dep.model ? "not downloaded yet" : "no model files (custom server)"}</span>
      </div>
      <UsageBar used={used} limit={limit} label="Storage" format={fmtBytes} />
    </div>
  );
}
