import { useState } from "preact/hooks";
import { api, optional, type Deployment, type FleetEntry, type Me, type Usage } from "../api";
import { Badge, Empty, ErrorBox, Snippet, UsageBar, usePoll } from "../components";
import { catalogInfo, deriveLifecycle, LIFECYCLE_LABEL, MODEL_TYPES } from "../util";

export interface CatalogData {
  deployments: Deployment[];
  fleet: Record<string, FleetEntry>;
  usage: Record<string, Usage>;
}

export async function loadCatalog(): Promise<CatalogData> {
  const [deps, fleet, usage] = await Promise.all([
    api<{ data: Deployment[] }>("/api/deployments"),
    optional<{ data: FleetEntry[] }>("/api/fleet"),
    optional<{ data: Usage[] }>("/api/usage/by-deployment?window=30d"),
  ]);
  return {
    deployments: deps.data,
    fleet: Object.fromEntries((fleet?.data ?? []).map((f) => [f.deployment, f])),
    usage: Object.fromEntries((usage?.data ?? []).map((u) => [u.deployment ?? "", u])),
  };
}

export function lifecycleOf(dep: Deployment, fleet: Record<string, FleetEntry>): string {
  return fleet[dep.name]?.lifecycle ?? deriveLifecycle(dep);
}

export function Catalog({ me }: { me: Me }) {
  const [data, error] = usePoll(loadCatalog, 5000);
  const [query, setQuery] = useState("");
  const [type, setType] = useState("all");
  const [open, setOpen] = useState<string | null>(null);

  const q = query.trim().toLowerCase();
  const items = (data?.deployments ?? [])
    .map((d) => ({ dep: d, info: catalogInfo(d) }))
    .filter(({ info }) => type === "all" || info.type === type)
    .filter(({ dep, info }) => !q || [dep.name, info.displayName, info.vendor, info.type, dep.model].some((s) => (s ?? "").toLowerCase().includes(q)));
  const monthUsed = me.usage_month?.tokens ?? 0;

  return (
    <section>
      <div class="page-head">
        <div>
          <h1>Catalog</h1>
          <p class="muted">Every model you may use, with its state and how to call it.</p>
        </div>
      </div>
      {me.plan_tokens ? (
        <div class="panel">
          <UsageBar used={monthUsed} limit={me.plan_tokens} label="Your plan this month" />
        </div>
      ) : null}
      <div class="toolbar">
        <input type="search" class="search" placeholder="Search by name, vendor or type" aria-label="Search" value={query} onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
        <div class="chips" role="group" aria-label="Filter by type">
          {["all", ...MODEL_TYPES].map((t) => (
            <button type="button" class={`chip ${type === t ? "on" : ""}`} data-type={t} onClick={() => setType(t)}>
              {t === "all" ? "All" : t}
            </button>
          ))}
        </div>
      </div>
      <ErrorBox error={error} />
      {data && items.length === 0 && <Empty>No deployment matches.</Empty>}
      {!data && !error && <Empty>Loading…</Empty>}
      <div class="grid">
        {items.map(({ dep, info }) => {
          const life = lifecycleOf(dep, data!.fleet);
          const used = data!.usage[dep.name]?.total_tokens ?? 0;
          return (
            <article class="card" data-deployment={dep.name} key={dep.name}>
              <div class="card-head">
                <div>
                  <div class="card-title">{info.displayName}</div>
                  <div class="muted small">
                    {info.vendor} · <code>{dep.name}</code>
                  </div>
                </div>
                <Badge value={life} label={LIFECYCLE_LABEL[life] ?? life} testid="lifecycle" />
              </div>
              <div class="card-meta">
                <span class="tag" data-testid="type">
                  {info.type}
                </span>
                <span class="tag">{dep.framework}</span>
                {dep.model && <span class="tag mono">{dep.model}</span>}
              </div>
              {dep.description && <p class="card-desc">{dep.description}</p>}
              <UsageBar used={used} limit={me.plan_tokens} label="Tokens (30 d)" />
              <div class="card-actions">
                {(info.type === "chat" || info.type === "code") && (
                  <a class="btn primary small" href={`#/playground/${encodeURIComponent(dep.name)}`}>
                    Playground
                  </a>
                )}
                {info.type === "video-generation" && (
                  <a class="btn primary small" href={`#/video/${encodeURIComponent(dep.name)}`}>
                    Generate video
                  </a>
                )}
                <button type="button" class="btn small" onClick={() => setOpen(open === dep.name ? null : dep.name)}>
                  {open === dep.name ? "Hide API" : "API snippet"}
                </button>
                {me.admin && (
                  <a class="btn small ghost" href={`#/deployments/${encodeURIComponent(dep.name)}`}>
                    Details
                  </a>
                )}
              </div>
              {open === dep.name && <Snippet model={dep.name} type={info.type} />}
            </article>
          );
        })}
      </div>
    </section>
  );
}
