import { useState } from "preact/hooks";
import { api, type Deployment, type Me } from "../api";
import { CopyButton, ErrorBox, Modal, usePoll } from "../components";
import { fmtAgo, fmtCost, fmtNum, fmtTime, usageTone } from "../util";

interface KeyRow {
  id: string;
  name: string;
  prefix: string;
  deployments: string[] | null;
  admin: boolean;
  created_at: string;
  revoked_at: string | null;
  budget_usd_monthly?: number | null;
  budget_tokens_monthly?: number | null;
  plan_tokens?: number | null;
  // Month to date (what budgets are checked against), last request, bootstrap key.
  spend_month_usd?: number;
  tokens_month?: number;
  last_used_at?: string | null;
  bootstrap?: boolean;
}

/** Spent this month against the monthly budgets, flagged when a budget is reached. */
export function SpendCell({ usd, tokens, budgetUsd, budgetTokens }: { usd: number; tokens: number; budgetUsd: number | null | undefined; budgetTokens: number | null | undefined }) {
  const line = (used: number, cap: number | null | undefined, fmt: (n: number) => string, what: string) => {
    if (cap === null || cap === undefined) return <div>{fmt(used)}{what ? ` ${what}` : ""}</div>;
    const over = used >= cap;
    const tone = cap > 0 ? usageTone(used / cap) : "bad";
    return (
      <div class={over ? "over" : ""} data-tone={tone} data-over={over ? "true" : "false"}>
        {fmt(used)} of {fmt(cap)}
        {what ? ` ${what}` : ""}
        {over ? " · over budget" : ""}
      </div>
    );
  };
  return (
    <div data-testid="spend">
      {line(usd, budgetUsd, fmtCost, "")}
      {(tokens > 0 || (budgetTokens !== null && budgetTokens !== undefined)) && line(tokens, budgetTokens, (n) => fmtNum(n), "tokens")}
    </div>
  );
}

/** What a key that is not an admin's sees here: itself, its limits and this month's use. */
function OwnKey({ me }: { me: Me }) {
  const used = me.usage_month ?? { tokens: 0, cost: 0 };
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>API keys</h1>
          <p class="muted">Your key. Only admin keys create, change or revoke keys.</p>
        </div>
      </div>
      <div class="panel" data-testid="own-key">
        <div class="kv">
          <span>Name</span>
          <span>{me.name}</span>
          <span>Id</span>
          <span class="mono">{me.id}</span>
          <span>Deployments</span>
          <span>{me.deployments === null ? "all" : me.deployments.join(", ") || "none"}</span>
          <span>This month</span>
          <span>
            <SpendCell usd={used.cost} tokens={used.tokens} budgetUsd={me.budget_usd_monthly} budgetTokens={me.budget_tokens_monthly} />
          </span>
          <span>Plan</span>
          <span>{me.plan_tokens ? `${fmtNum(me.plan_tokens)} tokens a month` : "no plan limit"}</span>
        </div>
      </div>
    </section>
  );
}

interface Limits {
  deployments: string[] | null;
  budget_usd_monthly: string;
  budget_tokens_monthly: string;
  plan_tokens: string;
}

function limitsBody(l: Limits, forPatch: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const num = (k: "budget_usd_monthly" | "budget_tokens_monthly" | "plan_tokens") => {
    const v = l[k].trim();
    if (v) body[k] = Number(v);
    else if (forPatch) body[k] = null;
  };
  num("budget_usd_monthly");
  num("budget_tokens_monthly");
  num("plan_tokens");
  if (forPatch || l.deployments !== null) body.deployments = l.deployments;
  return body;
}

function LimitsForm({ value, onChange, names }: { value: Limits; onChange: (l: Limits) => void; names: string[] }) {
  const all = value.deployments === null;
  return (
    <>
      <fieldset class="fieldset">
        <legend>Deployments</legend>
        <label class="inline">
          <input type="checkbox" name="all-deployments" checked={all} onChange={(e) => onChange({ ...value, deployments: (e.target as HTMLInputElement).checked ? null : [] })} /> All deployments
        </label>
        {!all && (
          <div class="checks">
            {names.map((n) => (
              <label class="inline">
                <input
                  type="checkbox"
                  name={`dep-${n}`}
                  checked={value.deployments!.includes(n)}
                  onChange={(e) => {
                    const on = (e.target as HTMLInputElement).checked;
                    const set = new Set(value.deployments);
                    if (on) set.add(n);
                    else set.delete(n);
                    onChange({ ...value, deployments: [...set].sort() });
                  }}
                />{" "}
                {n}
              </label>
            ))}
          </div>
        )}
      </fieldset>
      <div class="grid-form">
        <label>
          Monthly budget ($)
          <input name="budget_usd_monthly" type="number" min="0" step="any" value={value.budget_usd_monthly} onInput={(e) => onChange({ ...value, budget_usd_monthly: (e.target as HTMLInputElement).value })} />
        </label>
        <label>
          Monthly token budget
          <input name="budget_tokens_monthly" type="number" min="0" value={value.budget_tokens_monthly} onInput={(e) => onChange({ ...value, budget_tokens_monthly: (e.target as HTMLInputElement).value })} />
        </label>
        <label>
          Plan limit (tokens)
          <input name="plan_tokens" type="number" min="0" value={value.plan_tokens} onInput={(e) => onChange({ ...value, plan_tokens: (e.target as HTMLInputElement).value })} />
        </label>
      </div>
    </>
  );
}

const str = (n: number | null | undefined) => (n === null || n === undefined ? "" : String(n));

export function Keys({ me }: { me: Me }) {
  return me.admin ? <AdminKeys /> : <OwnKey me={me} />;
}

function AdminKeys() {
  const [keys, error, reload] = usePoll(() => api<{ data: KeyRow[] }>("/api/keys"), 10000);
  const [deps] = usePoll(() => api<{ data: Deployment[] }>("/api/deployments"), 0);
  const names = (deps?.data ?? []).map((d) => d.name);
  const [name, setName] = useState("");
  const [admin, setAdmin] = useState(false);
  const [limits, setLimits] = useState<Limits>({ deployments: null, budget_usd_monthly: "", budget_tokens_monthly: "", plan_tokens: "" });
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const [editing, setEditing] = useState<{ row: KeyRow; limits: Limits } | null>(null);
  const [revoking, setRevoking] = useState<KeyRow | null>(null);
  const [formError, setFormError] = useState<string | null>(null);
  const [showRevoked, setShowRevoked] = useState(false);

  const create = async (e: Event) => {
    e.preventDefault();
    setFormError(null);
    try {
      const r = await api<KeyRow & { key: string }>("/api/keys", { method: "POST", json: { name: name.trim(), admin, ...limitsBody(limits, false) } });
      setCreated({ name: r.name, key: r.key });
      setName("");
      setAdmin(false);
      setLimits({ deployments: null, budget_usd_monthly: "", budget_tokens_monthly: "", plan_tokens: "" });
      reload();
    } catch (err) {
      setFormError((err as Error).message);
    }
  };
  const saveLimits = async () => {
    if (!editing) return;
    try {
      await api(`/api/keys/${editing.row.id}`, { method: "PATCH", json: limitsBody(editing.limits, true) });
      setEditing(null);
      reload();
    } catch (err) {
      setFormError((err as Error).message);
      setEditing(null);
    }
  };
  const revoke = async () => {
    if (!revoking) return;
    await api(`/api/keys/${revoking.id}`, { method: "DELETE" }).catch((err) => setFormError((err as Error).message));
    setRevoking(null);
    reload();
  };

  const rows = (keys?.data ?? []).filter((k) => showRevoked || !k.revoked_at);
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>API keys</h1>
          <p class="muted">Keys for the API and the console. A new key is shown once.</p>
        </div>
      </div>
      <form class="panel form" onSubmit={create}>
        <h3>Create a key</h3>
        <div class="grid-form">
          <label>
            Name
            <input name="key-name" value={name} required maxLength={200} onInput={(e) => setName((e.target as HTMLInputElement).value)} placeholder="my-app" />
          </label>
          <label class="inline align-end">
            <input type="checkbox" name="admin" checked={admin} onChange={(e) => setAdmin((e.target as HTMLInputElement).checked)} /> Admin (full access)
          </label>
        </div>
        {!admin && <LimitsForm value={limits} onChange={setLimits} names={names} />}
        <ErrorBox error={formError} />
        <div class="wizard-nav">
          <button class="btn primary" type="submit" disabled={!name.trim()}>
            Create key
          </button>
        </div>
      </form>
      <div class="panel">
        <div class="panel-head">
          <h3>Keys</h3>
          <label class="inline small">
            <input type="checkbox" checked={showRevoked} onChange={(e) => setShowRevoked((e.target as HTMLInputElement).checked)} /> Show revoked
          </label>
        </div>
        <ErrorBox error={error} />
        <div class="table-wrap">
          <table class="table stack" data-testid="keys">
            <thead>
              <tr>
                <th>Name</th>
                <th>Key</th>
                <th>Access</th>
                <th>Spent this month</th>
                <th class="hide-sm">Plan</th>
                <th>Last used</th>
                <th class="hide-sm">Created</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {rows.map((k) => (
                <tr data-key={k.id} class={k.revoked_at ? "revoked" : ""}>
                  <td>{k.name}</td>
                  <td class="mono small">{k.prefix}…</td>
                  <td>{k.admin ? "admin" : k.deployments === null ? "all deployments" : k.deployments.join(", ") || "none"}</td>
                  <td class="small">
                    <SpendCell usd={k.spend_month_usd ?? 0} tokens={k.tokens_month ?? 0} budgetUsd={k.budget_usd_monthly} budgetTokens={k.budget_tokens_monthly} />
                  </td>
                  <td class="hide-sm small">{k.plan_tokens != null ? `${fmtNum(k.plan_tokens)} tokens` : "–"}</td>
                  <td class="small" data-testid="last-used">
                    <time dateTime={k.last_used_at ?? ""}>{fmtAgo(k.last_used_at)}</time>
                  </td>
                  <td class="hide-sm small">{fmtTime(k.created_at)}</td>
                  <td class="actions">
                    {k.revoked_at ? (
                      <span class="muted small">revoked</span>
                    ) : (
                      <>
                        {!k.admin && (
                          <button
                            type="button"
                            class="btn small"
                            onClick={() =>
                              setEditing({
                                row: k,
                                limits: { deployments: k.deployments, budget_usd_monthly: str(k.budget_usd_monthly), budget_tokens_monthly: str(k.budget_tokens_monthly), plan_tokens: str(k.plan_tokens) },
                              })
                            }
                          >
                            Limits
                          </button>
                        )}
                        {k.bootstrap ? (
                          <span class="muted small" title="TORPOR_ADMIN_KEY or the data dir's admin.key: torpor re-activates it at every start">
                            bootstrap key
                          </span>
                        ) : (
                          <button type="button" class="btn small danger" onClick={() => setRevoking(k)}>
                            Revoke
                          </button>
                        )}
                      </>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
      {created && (
        <Modal title="Your new API key" onClose={() => setCreated(null)}>
          <p>
            This is the only time the key <strong>{created.name}</strong> is shown. Copy it now.
          </p>
          <div class="copyline" data-testid="new-key">
            <code>{created.key}</code>
            <CopyButton text={created.key} />
          </div>
          <div class="wizard-nav">
            <button type="button" class="btn primary" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </Modal>
      )}
      {editing && (
        <Modal title={`Limits of ${editing.row.name}`} onClose={() => setEditing(null)}>
          <LimitsForm value={editing.limits} onChange={(l) => setEditing({ ...editing, limits: l })} names={names} />
          <div class="wizard-nav">
            <button type="button" class="btn ghost" onClick={() => setEditing(null)}>
              Cancel
            </button>
            <button type="button" class="btn primary" onClick={saveLimits}>
              Save
            </button>
          </div>
        </Modal>
      )}
      {revoking && (
        <Modal title="Revoke key?" onClose={() => setRevoking(null)}>
          <p>
            Requests with <strong>{revoking.name}</strong> ({revoking.prefix}…) will be refused at once. This cannot be undone.
          </p>
          <div class="wizard-nav">
            <button type="button" class="btn ghost" onClick={() => setRevoking(null)}>
              Cancel
            </button>
            <button type="button" class="btn danger" onClick={revoke}>
              Revoke
            </button>
          </div>
        </Modal>
      )}
    </section>
  );
}
