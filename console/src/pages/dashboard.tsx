import { useState } from "preact/hooks";
import { api, optional, type Deployment, type FleetEntry, type Me, type SeriesPoint, type Usage } from "../api";
import { Badge, Empty, ErrorBox, hourLabel, LineChart, Stat, usePoll } from "../components";
import { deriveLifecycle, fmtCost, fmtMs, fmtNum, LIFECYCLE_LABEL } from "../util";

interface DashData {
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
  const deps = fleet ? null : await api<{ data: Deployment[] }>("/api/deployments");
  return {
    fleet: fleet?.data ?? fleetFromDeployments(deps!.data),
    fleetFromApi: !!fleet,
    h1,
    h24,
    byDep: byDep?.data ?? null,
    series: series?.data ?? null,
  };
}

function Summary({ title, u, id }: { title: string; u: Usage | null; id: string }) {
  return (
    <div class="panel" data-testid={`summary-${id}`}>
      <h3>{title}</h3>
      {u ? (
        <div class="stats">
          <Stat label="Requests" value={fmtNum(u.requests)} raw={u.requests} testid={`sum-${id}-requests`} />
          <Stat label="Tokens" value={fmtNum(u.total_tokens)} raw={u.total_tokens} testid={`sum-${id}-tokens`} />
          <Stat label="Avg latency" value={fmtMs(u.avg_latency_ms)} raw={u.avg_latency_ms} testid={`sum-${id}-latency`} />
          <Stat label="Avg TTFT" value={fmtMs(u.avg_ttft_ms)} raw={u.avg_ttft_ms} testid={`sum-${id}-ttft`} />
          <Stat label="Cost" value={fmtCost(u.cost)} raw={u.cost} testid={`sum-${id}-cost`} />
        </div>
      ) : (
        <Empty>No data yet.</Empty>
      )}
    </div>
  );
}

export function Dashboard({ me: _me }: { me: Me }) {
  const [data, error] = usePoll(loadDashboard, 10000);
  const [costSort, setCostSort] = useState(true);
  const series = data?.series ?? [];
  const labels = series.map((p) => hourLabel(p.start));
  const byDep = [...(data?.byDep ?? [])].sort((a, b) => (costSort ? b.cost - a.cost : (a.deployment ?? "").localeCompare(b.deployment ?? "")));
  const totalCost = byDep.reduce((s, u) => s + u.cost, 0);
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>GPU dashboard</h1>
          <p class="muted">Lifecycle, usage and spend of every deployment.</p>
        </div>
      </div>
      <ErrorBox error={error} />
      <div class="two">
        <Summary title="Last hour" u={data?.h1 ?? null} id="1h" />
        <Summary title="Last 24 hours" u={data?.h24 ?? null} id="24h" />
      </div>
      <div class="panel">
        <h3>Deployments</h3>
        <div class="table-wrap">
          <table class="table" data-testid="fleet">
            <thead>
              <tr>
                <th>Deployment</th>
                <th>Lifecycle</th>
                <th>GPU</th>
                <th>Memory</th>
                <th>Workers</th>
                <th>Requests</th>
                <th>Last startup</th>
              </tr>
            </thead>
            <tbody>
              {(data?.fleet ?? []).map((f) => (
                <tr data-deployment={f.deployment}>
                  <td>
                    <a href={`#/deployments/${encodeURIComponent(f.deployment)}`}>{f.deployment}</a>
                  </td>
                  <td>
                    <Badge value={f.lifecycle} label={LIFECYCLE_LABEL[f.lifecycle] ?? f.lifecycle} />
                  </td>
                  <td>{f.gpu_kind ?? "–"}</td>
                  <td>{f.gpu_memory_mb ? `${fmtNum(f.gpu_memory_mb / 1024, 1)} GiB` : "–"}</td>
                  <td>
                    {f.workers.ready}/{f.workers.total}
                  </td>
                  <td data-testid="fleet-requests">{fmtNum(f.total_requests)}</td>
                  <td>{f.last_startup_s !== null ? `${f.last_startup_s.toFixed(1)} s` : "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {data && data.fleet.length === 0 && <Empty>No deployments.</Empty>}
      </div>
      <div class="panel">
        <div class="panel-head">
          <h3>Cost by deployment (24 h)</h3>
          <button type="button" class="btn small ghost" onClick={() => setCostSort(!costSort)}>
            Sort by {costSort ? "name" : "cost"}
          </button>
        </div>
        {data?.byDep ? (
          <div class="table-wrap">
            <table class="table" data-testid="cost-breakdown">
              <thead>
                <tr>
                  <th>Deployment</th>
                  <th>Requests</th>
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
          <Empty>No data yet.</Empty>
        )}
      </div>
      <div class="charts">
        <LineChart title="Request rate (req/s)" labels={labels} series={[{ label: "req/s", data: series.map((p) => p.request_rate) }]} testid="chart-rps" />
        <LineChart
          title="Tokens"
          labels={labels}
          series={[
            { label: "prompt", data: series.map((p) => p.prompt_tokens) },
            { label: "completion", data: series.map((p) => p.completion_tokens) },
          ]}
          testid="chart-tokens"
        />
        <LineChart title="Avg latency (ms)" labels={labels} series={[{ label: "latency", data: series.map((p) => p.avg_latency_ms) }]} testid="chart-latency" />
        <LineChart title="Tokens per second" labels={labels} series={[{ label: "tok/s", data: series.map((p) => p.tokens_per_s) }]} testid="chart-tps" />
        <LineChart title="Cost ($)" labels={labels} series={[{ label: "cost", data: series.map((p) => p.cost) }]} testid="chart-cost" />
      </div>
    </section>
  );
}
