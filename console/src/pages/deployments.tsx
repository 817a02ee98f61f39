import { useState } from "preact/hooks";
import { api, type Deployment, type Me } from "../api";
import { Badge, CopyButton, Empty, ErrorBox, Modal, usePoll } from "../components";
import { catalogInfo, isFailing, STATUS_LABEL, workersFailingFirst } from "../util";

export function logsHref(dep: string, worker?: string): string {
  return `#/deployments/${encodeURIComponent(dep)}/logs${worker ? `?worker=${encodeURIComponent(worker)}` : ""}`;
}

function StatusPopover({ dep, onClose }: { dep: Deployment; onClose: () => void }) {
  const failing = workersFailingFirst(dep.workers).filter(isFailing).slice(0, 5);
  const live = dep.workers.filter((w) => !["stopped", "failed"].includes(w.state));
  return (
    <div class="popover" role="dialog" aria-label={`Status of ${dep.name}`} data-testid="status-popover">
      <div class="popover-head">
        <Badge value={dep.status} label={STATUS_LABEL[dep.status] ?? dep.status} />
        <button type="button" class="btn ghost small" aria-label="Close" onClick={onClose}>
          ✕
        </button>
      </div>
      <div class="kv">
        <span>Reason</span>
        <span>{dep.reason ?? (dep.status === "scaled_to_zero" ? "No traffic: scaled to zero until the next request" : "–")}</span>
        <span>Ready</span>
        <span>
          {dep.ready_workers} of {dep.desired_workers} desired ({live.length} live)
        </span>
      </div>
      {failing.length > 0 && (
        <>
          <div class="popover-sub">Failing workers</div>
          <ul class="plain">
            {failing.map((w) => (
              <li>
                <code>{w.id}</code> <span class="muted">{w.reason ?? w.state}</span>{" "}
                <a href={logsHref(dep.name, w.id)}>logs</a>
              </li>
            ))}
          </ul>
        </>
      )}
      <div class="popover-sub">Workers</div>
      <ul class="plain">
        {live.length === 0 && <li class="muted">none running</li>}
        {live.map((w) => (
          <li>
            <code>{w.id}</code> <Badge value={w.state} /> <a href={logsHref(dep.name, w.id)}>logs</a>
          </li>
        ))}
      </ul>
    </div>
  );
}

export function ConnectModal({ dep, onClose }: { dep: Deployment; onClose: () => void }) {
  const perDep = `${location.origin}${dep.endpoint}`;
  const shared = `${location.origin}/v1`;
  return (
    <Modal title={`Connect to ${dep.name}`} onClose={onClose}>
      <p class="muted">Any OpenAI-compatible client works. Use an API key allowed to use this deployment.</p>
      <label>Base URL (this deployment)</label>
      <div class="copyline" data-testid="endpoint-url">
        <code>{perDep}</code>
        <CopyButton text={perDep} />
      </div>
      <label>Shared base URL (set model to "{dep.name}")</label>
      <div class="copyline">
        <code>{shared}</code>
        <CopyButton text={shared} />
      </div>
    </Modal>
  );
}

export function DeploymentList({ me }: { me: Me }) {
  const [data, error] = usePoll(() => api<{ data: Deployment[] }>("/api/deployments"), 3000);
  const [pop, setPop] = useState<string | null>(null);
  const [connect, setConnect] = useState<Deployment | null>(null);
  const deps = data?.data ?? [];
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>Deployments</h1>
          <p class="muted">Serving status, workers and endpoints.</p>
        </div>
        {me.admin && (
          <a class="btn primary" href="#/deployments/new">
            + New deployment
          </a>
        )}
      </div>
      <ErrorBox error={error} />
      {data && deps.length === 0 && <Empty>No deployments yet.</Empty>}
      <div class="table-wrap">
        <table class="table deployments">
          <thead>
            <tr>
              <th>Name</th>
              <th>Status</th>
              <th class="hide-sm">Framework</th>
              <th class="hide-sm">Model</th>
              <th>Workers</th>
              <th class="hide-sm">Queue</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {deps.map((d) => (
              <tr data-deployment={d.name}>
                <td>
                  <a href={`#/deployments/${encodeURIComponent(d.name)}`} class="strong">
                    {d.name}
                  </a>
                  <div class="muted small">{catalogInfo(d).type}</div>
                </td>
                <td class="pop-anchor">
                  <button type="button" class="badge-btn" aria-haspopup="dialog" onClick={() => setPop(pop === d.name ? null : d.name)}>
                    <Badge value={d.status} label={STATUS_LABEL[d.status] ?? d.status} testid="status" />
                  </button>
                  {pop === d.name && <StatusPopover dep={d} onClose={() => setPop(null)} />}
                </td>
                <td class="hide-sm">{d.framework}</td>
                <td class="hide-sm mono small">{d.model || "–"}</td>
                <td>
                  {d.ready_workers}/{d.desired_workers}
                  <span class="muted small"> ({d.min_workers}–{d.max_workers})</span>
                </td>
                <td class="hide-sm">
                  {d.queue.inflight} / {d.queue.waiting}
                </td>
                <td class="actions">
                  <button type="button" class="btn small" onClick={() => setConnect(d)}>
                    Connect
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {connect && <ConnectModal dep={connect} onClose={() => setConnect(null)} />}
    </section>
  );
}
