import { useState } from "preact/hooks";
import { api, optional, type Deployment, type FleetEntry, type Me, type SeriesPoint, type Usage } from "../api";
import { Badge, Empty, ErrorBox, hourLabel, LineChart, Stat, usePoll } from "../components";
import { GpuNodes } from "./nodes";
import { deriveLifecycle, fmtCost, fmtMs, fmtNum, LIFECYCLE_LABEL, STATUS_LABEL } from "../util";

interface DashData {
  reasons: Record<string, string | null | undefined>;
  fleet: FleetEntry[];
  fleetFromApi: boolean;
  h1: Usage | null;
  h24: Usage | null;
  byDep: Usage[] | null;
  series: SeriesPoint[] | null;
}

function fleetFromDeployments(deps: Deployment[]): FleetEntry[] {
  return deps.map((d) => {
    const ready = d.workers.filter((w) => w.state === "healthy" || w.state === "sleeping").length;
    const starting = d.workers.filter((w) => w.state === "provisioning").length;
    return {
      deployment: d.name,
      lifecycle: deriveLifecycle(d),
      status: d.status,
      gpu_kind: (d.gpus ?? 0) > 0 ? `${d.gpus} GPU` : "CPU",
      gpu_memory_mb: null,
      total_requests: null,
      last_startup_s: null,
      workers: { ready, starting, total: d.workers.filter((w) => !["stopped", "failed"].includes(w.state)).length },
    };
  });
}

async function loadDashboard(): Promise<DashData> {
  const [fleet, h1, h24, byDep, series] = await Promise.all([
    optional<{ data: FleetEntry[] }>("/api/fleet"),
    optional<Usage>("/api/usage/summary?window=1h"),
    optional<Usage>("/api/usage/summary?window=24h"),
    optional<{ data: Usage[] }>("/api/usage/by-deployment?window=24h"),
    optional<{ data: SeriesPoint[] }>("/api/usage/timeseries?window=24h&step=1h"),
  ]);
  const deps = await api<{ data: Deployment[] }>("/api/deployments");
  return {
    reasons: Object.fromEntries(deps.data.map((d) => [d.name, d.reason])),
    fleet: fleet?.data ?? fleetFromDeployments(deps.data),
    fleetFromApi: !!fleet,
    h1,
    h24,
    byDep: byDep?.data ?? null,
    series: series?.data ?? null,
  };
}

/** "3 (60%)" errors of the requests, or "0". */
export function errorText(errors: number, requests: number): string {
  return errors && requests ? `${fmtNum(errors)} (${Math.round((errors / requests) * 100)}%)` : fmtNum(errors ?? 0);
}

function Summary({ title, u, id, loading }: { title: string; u: Usage | null; id: string; loading: boolean }) {
  return (
    <div class="panel" data-testid={`summary-${id}`}>
      <h3>{title}</h3>
      {u ? (
        <div class="stats">
          <Stat label="Requests" value={fmtNum(u.requests)} raw={u.requests} testid={`sum-${id}-requests`} />
          <Stat label="Errors" value={errorText(u.errors, u.requests)} raw={u.errors} testid={`sum-${id}-errors`} />
          <Stat label="Tokens" value={fmtNum(u.total_tokens)} raw={u.total_tokens} testid={`sum-${id}-tokens`} />
          <Stat label="Avg latency" value={fmtMs(u.avg_latency_ms)} raw={u.avg_latency_ms} testid={`sum-${id}-latency`} />
          <Stat label="Avg TTFT" value={fmtMs(u.avg_ttft_ms)} raw={u.avg_ttft_ms} testid={`sum-${id}-ttft`} />
          <Stat label="Cost" value={fmtCost(u.cost)} raw={u.cost} testid={`sum-${id}-cost`} />
        </div>
      ) : (
        <Empty>{loading ? "Loading…" : "No usage data."}</Empty>
      )}
    </div>
  );
}

export function Dashboard({ me }: { me: Me }) {
  const [data, error] = usePoll(loadDashboard, 10000);
  const [costSort, setCostSort] = useState(true);
  const loading = !data && !error;
  const series = data?.series ?? [];
  const labels = series.map((p) => hourLabel(p.start));
  // An hour without requests has no latency or speed: a gap in the line, not a 0.
  const quiet = (p: SeriesPoint) => !p.requests;
  const usageOf = Object.fromEntries((data?.byDep ?? []).map((u) => [u.deployment ?? "", u]));
  const byDep = [...(data?.byDep ?? [])].sort((a, b) => (costSort ? b.cost - a.cost : (a.deployment ?? "").localeCompare(b.deployment ?? "")));
  const totalCost = byDep.reduce((s, u) => s + u.cost, 0);
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>GPU dashboard</h1>
          <p class="muted">{me.admin ? "Lifecycle, usage and spend of every deployment." : "Your usage and spend on the deployments your key may use."}</p>
        </div>
      </div>
      <ErrorBox error={error} />
      <div class="two">
        <Summary title="Last hour" u={data?.h1 ?? null} id="1h" loading={loading} />
        <Summary title="Last 24 hours" u={data?.h24 ?? null} id="24h" loading={loading} />
      </div>
      <div class="panel">
        <h3>Deployments</h3>
        <div class="table-wrap">
          <table class="table stack" data-testid="fleet">
            <thead>
              <tr>
                <th>Deployment</th>
                <th>Lifecycle</th>
                <th>GPU</th>
                <th>Memory</th>
                <th>Workers</th>
                <th>Requests (24 h)</th>
                <th>Errors (24 h)</th>
                <th>Last startup</th>
                <th>Wakes (last)</th>
              </tr>
            </thead>
            <tbody>
              {(data?.fleet ?? []).map((f) => (
                <tr data-deployment={f.deployment}>
                  <td>
                    <a href={`#/deployments/${encodeURIComponent(f.deployment)}`}>{f.deployment}</a>
                  </td>
                  <td>
                    {["pending", "error"].includes(f.status) ? (
                      <span>
                        <Badge value={f.status} label={STATUS_LABEL[f.status] ?? f.status} testid="fleet-state" />
                        {data?.reasons[f.deployment] && <div class="muted small" data-testid="fleet-reason">{data.reasons[f.deployment]}</div>}
                      </span>
                    ) : (
                      <Badge value={f.lifecycle} label={LIFECYCLE_LABEL[f.lifecycle] ?? f.lifecycle} testid="fleet-state" />
                    )}
                  </td>
                  <td>{f.gpu_kind ?? "–"}</td>
                  <td>{f.gpu_memory_mb ? `${fmtNum(f.gpu_memory_mb / 1024, 1)} GiB` : "–"}</td>
                  <td>
                    {f.workers.ready}/{f.workers.total}
                  </td>
                  <td data-testid="fleet-requests">{fmtNum(usageOf[f.deployment]?.requests ?? 0)}</td>
                  <td data-testid="fleet-errors" data-value={usageOf[f.deployment]?.errors ?? 0} class={usageOf[f.deployment]?.errors ? "over" : ""}>
                    {errorText(usageOf[f.deployment]?.errors ?? 0, usageOf[f.deployment]?.requests ?? 0)}
                  </td>
                  <td>{f.last_startup_s !== null ? `${f.last_startup_s.toFixed(1)} s` : "–"}</td>
                  <td data-testid="fleet-wakes">
                    {f.wakes ? `${fmtNum(f.wakes)} (${f.last_wake_ms != null ? `${fmtNum(f.last_wake_ms, 0)} ms` : "–"})` : "–"}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {loading && <Empty>Loading…</Empty>}
        {data && data.fleet.length === 0 && <Empty>No deployments.</Empty>}
      </div>
      {me.admin && <GpuNodes />}
      <div class="panel">
        <div class="panel-head">
          <h3>Cost by deployment (24 h)</h3>
          <button type="button" class="btn small ghost" onClick={() => setCostSort(!costSort)}>
            Sort by {costSort ? "name" : "cost"}
          </button>
        </div>
        {data?.byDep ? (
          <div class="table-wrap">
            <table class="table stack" data-testid="cost-breakdown">
              <thead>
                <tr>
                  <th>Deployment</th>
                  <th>Requests</th>
                  <th>Errors</th>
                  <th>Tokens</th>
                  <th>Avg latency</th>
                  <th>Cost</th>
                  <th class="wide">Share</th>
                </tr>
              </thead>
              <tbody>
                {byDep.map((u) => (
                  <tr data-deployment={u.deployment}>
                    <td>{u.deployment}</td>
                    <td>{fmtNum(u.requests)}</td>
                    <td data-testid="errors" data-value={u.errors} class={u.errors ? "over" : ""}>
                      {errorText(u.errors, u.requests)}
                    </td>
                    <td>{fmtNum(u.total_tokens)}</td>
                    <td>{fmtMs(u.avg_latency_ms)}</td>
                    <td>{fmtCost(u.cost)}</td>
                    <td class="wide">
                      <div class="share">
                        <div style={{ width: `${totalCost ? (u.cost / totalCost) * 100 : 0}%` }} />
                      </div>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Empty>{loading ? "Loading…" : "No usage data."}</Empty>
        )}
      </div>
      <div class="charts">
        <LineChart
          title="Requests and errors per hour"
          labels={labels}
          series={[
            { label: "requests", data: series.map((p) => p.requests) },
            { label: "errors", data: series.map((p) => p.errors ?? 0), color: "#ef4444" },
          ]}
          testid="chart-requests"
          loading={loading}
        />
        <LineChart
          title="Tokens"
          labels={labels}
          series={[
            { label: "prompt", data: series.map((p) => p.prompt_tokens) },
            { label: "completion", data: series.map((p) => p.completion_tokens) },
          ]}
          testid="chart-tokens"
          loading={loading}
        />
        <LineChart title="Avg latency (ms)" labels={labels} series={[{ label: "latency", data: series.map((p) => (quiet(p) ? null : p.avg_latency_ms)) }]} testid="chart-latency" loading={loading} />
        <LineChart title="Tokens per second" labels={labels} series={[{ label: "tok/s", data: series.map((p) => (quiet(p) ? null : p.tokens_per_s)) }]} testid="chart-tps" loading={loading} />
        <LineChart title="Cost ($)" labels={labels} series={[{ label: "cost", data: series.map((p) => p.cost) }]} testid="chart-cost" loading={loading} money />
      </div>
    </section>
  );
}
