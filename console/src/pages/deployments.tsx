import { useEffect, useRef, useState } from "preact/hooks";
import { api, type Deployment, type Me } from "../api";
import { Badge, CopyButton, Empty, ErrorBox, Modal, usePoll } from "../components";
import { catalogInfo, isFailing, STATUS_LABEL, workersFailingFirst } from "../util";

export function logsHref(dep: string, worker?: string): string {
  return `#/deployments/${encodeURIComponent(dep)}/logs${worker ? `?worker=${encodeURIComponent(worker)}` : ""}`;
}

/** "1 ready", or "1 ready · 0 needed" while an idle worker waits out its idle timeout. */
export function workersText(d: Deployment): string {
  return d.ready_workers === d.desired_workers ? `${d.ready_workers} ready` : `${d.ready_workers} ready · ${d.desired_workers} needed`;
}

const POP_WIDTH = 360;

/** Where the popover goes: under its anchor, or above it when there is more room there;
 * kept inside the viewport (it is fixed, so no scrolling table can clip it). */
function popoverPlace(anchor: DOMRect): Record<string, string> {
  const width = Math.min(POP_WIDTH, window.innerWidth - 16);
  const left = Math.max(8, Math.min(anchor.left, window.innerWidth - width - 8));
  const below = window.innerHeight - anchor.bottom - 14;
  const above = anchor.top - 14;
  const up = below < 260 && above > below;
  return {
    left: `${left}px`,
    width: `${width}px`,
    ...(up ? { bottom: `${window.innerHeight - anchor.top + 6}px` } : { top: `${anchor.bottom + 6}px` }),
    maxHeight: `${Math.max(120, up ? above : below)}px`,
  };
}

function StatusPopover({ dep, anchor, onClose }: { dep: Deployment; anchor: DOMRect; onClose: () => void }) {
  const failing = workersFailingFirst(dep.workers).filter(isFailing).slice(0, 5);
  const live = dep.workers.filter((w) => !["stopped", "failed"].includes(w.state));
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    const onDown = (e: MouseEvent) => {
      const t = e.target as Node;
      if (box.current?.contains(t) || (t instanceof Element && t.closest("[data-pop-anchor]"))) return;
      onClose();
    };
    const onScroll = (e: Event) => !box.current?.contains(e.target as Node) && onClose();
    window.addEventListener("keydown", onKey);
    document.addEventListener("mousedown", onDown);
    window.addEventListener("scroll", onScroll, true);
    window.addEventListener("resize", onClose);
    return () => {
      window.removeEventListener("keydown", onKey);
      document.removeEventListener("mousedown", onDown);
      window.removeEventListener("scroll", onScroll, true);
      window.removeEventListener("resize", onClose);
    };
  }, []);
  return (
    <div
      ref={box}
      class="popover"
      style={popoverPlace(anchor)}
      role="dialog"
      aria-label={`Status of ${dep.name}`}
      data-testid="status-popover"
    >
      <div class="popover-head">
        <Badge value={dep.status} label={STATUS_LABEL[dep.status] ?? dep.status} />
        <button type="button" class="btn ghost small" aria-label="Close" onClick={onClose}>
          ✕
        </button>
      </div>
      <div class="kv">
        <span>Reason</span>
        <span>{dep.reason ?? (dep.status === "scaled_to_zero" ? "No traffic: scaled to zero until the next request" : "–")}</span>
        <span>Workers</span>
        <span>
          {workersText(dep)} ({live.length} live)
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
  const [pop, setPop] = useState<{ name: string; anchor: DOMRect } | null>(null);
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
      {!data && !error && <Empty>Loading…</Empty>}
      {data && deps.length === 0 && <Empty>No deployments yet.</Empty>}
      <div class="table-wrap">
        <table class="table deployments stack">
          <thead>
            <tr>
              <th>Name</th>
              <th>Status</th>
              <th class="hide-sm">Framework</th>
              <th class="hide-sm">Model</th>
              <th>Workers</th>
              <th class="hide-sm">Requests</th>
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
                  <button
                    type="button"
                    class="badge-btn"
                    aria-haspopup="dialog"
                    aria-expanded={pop?.name === d.name}
                    data-pop-anchor
                    onClick={(e) => setPop(pop?.name === d.name ? null : { name: d.name, anchor: (e.currentTarget as HTMLElement).getBoundingClientRect() })}
                  >
                    <Badge value={d.status} label={STATUS_LABEL[d.status] ?? d.status} testid="status" />
                  </button>
                  {pop?.name === d.name && <StatusPopover dep={d} anchor={pop.anchor} onClose={() => setPop(null)} />}
                </td>
                <td class="hide-sm">{d.framework}</td>
                <td class="hide-sm mono small">{d.model || "–"}</td>
                <td data-testid="workers">
                  {workersText(d)}
                  <span class="muted small"> (min {d.min_workers}, max {d.max_workers})</span>
                </td>
                <td class="hide-sm">
                  {d.queue.inflight} running · {d.queue.waiting} waiting
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
