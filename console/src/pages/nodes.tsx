import { api } from "../api";
import { Empty, ErrorBox, usePoll } from "../components";

interface NodeGpu {
  index: number;
  kind?: string | null;
  type?: string | null;
  worker: string | null;
  deployment: string | null;
}

interface GpuNode {
  node: string;
  address: string | null;
  alive: boolean;
  type: string | null;
  gpus: NodeGpu[];
}

/** Devices per node: the cluster's nodes with the ray runtime, this host with the local one. */
export function GpuNodes() {
  const [data, error] = usePoll(() => api<{ nodes?: GpuNode[] }>("/api/gpus"), 10000);
  const nodes = data?.nodes ?? [];
  return (
    <div class="panel">
      <h3>GPUs by node</h3>
      <ErrorBox error={error} />
      {!data && !error && <Empty>Loading…</Empty>}
      {data && nodes.every((n) => n.gpus.length === 0) && <Empty>No accelerators (declare some with TORPOR_GPUS, e.g. 4xA100-80GB).</Empty>}
      {nodes.some((n) => n.gpus.length > 0) && (
        <div class="table-wrap">
          <table class="table stack" data-testid="gpu-nodes">
            <thead>
              <tr>
                <th>Node</th>
                <th>Address</th>
                <th>Type</th>
                <th>GPUs in use</th>
                <th>Held by</th>
              </tr>
            </thead>
            <tbody>
              {nodes
                .filter((n) => n.gpus.length > 0)
                .map((n) => {
                  const held = n.gpus.filter((g) => g.worker);
                  return (
                    <tr data-node={n.node}>
                      <td class="mono">{n.node === "local" ? "this host" : n.node.slice(0, 12)}</td>
                      <td class="mono">{n.address ?? "–"}</td>
                      <td>{n.type ?? n.gpus[0]?.type ?? "–"}</td>
                      <td>
                        {held.length} / {n.gpus.length}
                        {!n.alive && <span class="muted small"> (node lost)</span>}
                      </td>
                      <td>{held.length ? held.map((g) => `${g.deployment ?? g.worker} (#${g.index})`).join(", ") : "–"}</td>
                    </tr>
                  );
                })}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
