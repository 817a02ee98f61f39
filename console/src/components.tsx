import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import Chart from "chart.js/auto";
import { tone, usageTone, fmtCost, fmtNum, type ModelType, curlSnippet, pythonSnippet } from "./util";

export function Badge({ value, label, testid }: { value: string; label?: string; testid?: string }) {
  return (
    <span class={`badge ${tone(value)}`} data-testid={testid} data-value={value}>
      {label ?? value}
    </span>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

export function ErrorBox({ error }: { error: string | null }) {
  return error ? (
    <div class="error-box" role="alert">
      {error}
    </div>
  ) : null;
}

/** Poll `load` every `ms` while mounted; returns [data, error, reload]. */
export function usePoll<T>(load: () => Promise<T>, ms: number, deps: unknown[] = []): [T | null, string | null, () => void] {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let alive = true;
    let timer: number | undefined;
    const run = async () => {
      try {
        const value = await load();
        if (alive) {
          setData(value);
          setError(null);
        }
      } catch (e) {
        if (alive) setError(String((e as Error).message ?? e));
      }
      if (alive && ms > 0) timer = window.setTimeout(run, ms);
    };
    run();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [...deps, tick]);
  return [data, error, () => setTick((t) => t + 1)];
}

/** A fraction as a percentage people read: "<1%" rather than "0%" for a little. */
function pct(fraction: number): string {
  const p = fraction * 100;
  return p > 0 && p < 1 ? "<1%" : `${Math.round(p)}%`;
}

export function UsageBar({ used, limit, label, format = fmtNum }: { used: number; limit: number | null | undefined; label?: string; format?: (n: number) => string }) {
  if (!limit) {
    return (
      <div class="usage" data-testid="usage-bar" data-tone="none">
        <div class="usage-track">
          <div class="usage-fill none" style={{ width: "0%" }} />
        </div>
        <div class="usage-label">
          {label ?? "Tokens"}: {format(used)} used · no plan limit
        </div>
      </div>
    );
  }
  const frac = Math.min(1, used / limit);
  const t = usageTone(used / limit);
  return (
    <div class="usage" data-testid="usage-bar" data-tone={t}>
      <div class="usage-track" role="progressbar" aria-valuenow={used} aria-valuemax={limit}>
        <div class={`usage-fill ${t}`} style={{ width: `${(frac * 100).toFixed(1)}%` }} />
      </div>
      <div class="usage-label">
        {label ?? "Tokens"}: {format(used)} of {format(limit)} ({pct(used / limit)})
      </div>
    </div>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const ta = document.createElement("textarea");
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
    }
    setDone(true);
    window.setTimeout(() => setDone(false), 1500);
  };
  return (
    <button type="button" class="btn small ghost" onClick={copy} aria-label={label}>
      {done ? "Copied" : label}
    </button>
  );
}

export function Snippet({ model, type }: { model: string; type: ModelType }) {
  const [lang, setLang] = useState<"curl" | "python">("curl");
  const code = lang === "curl" ? curlSnippet(model, type) : pythonSnippet(model, type);
  return (
    <div class="snippet">
      <div class="snippet-bar">
        <button type="button" class={`chip ${lang === "curl" ? "on" : ""}`} onClick={() => setLang("curl")}>
          curl
        </button>
        <button type="button" class={`chip ${lang === "python" ? "on" : ""}`} onClick={() => setLang("python")}>
          Python
        </button>
        <span class="spacer" />
        <CopyButton text={code} />
      </div>
      <pre class="code" data-testid={`snippet-${lang}`}>
        {code}
      </pre>
    </div>
  );
}

export function Tabs<T extends string>({ tabs, value, onChange }: { tabs: [T, string][]; value: T; onChange: (t: T) => void }) {
  return (
    <div class="tabs" role="tablist">
      {tabs.map(([id, label]) => (
        <button type="button" role="tab" aria-selected={value === id} class={`tab ${value === id ? "on" : ""}`} onClick={() => onChange(id)}>
          {label}
        </button>
      ))}
    </div>
  );
}

export interface Series {
  label: string;
  data: (number | null)[];
  color?: string;
}

const PALETTE = ["#4f46e5", "#0ea5e9", "#f59e0b", "#10b981", "#ef4444"];

export function LineChart({ title, labels, series, testid, loading = false, money = false }: { title: string; labels: string[]; series: Series[]; testid?: string; loading?: boolean; money?: boolean }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | null>(null);
  useEffect(() => {
    if (!canvas.current) return;
    chart.current = new Chart(canvas.current, {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { display: true, position: "bottom", labels: { boxWidth: 10 } } },
        scales: {
          y: { beginAtZero: true, ticks: { maxTicksLimit: 5, ...(money ? { callback: (v: string | number) => fmtCost(Number(v)) } : {}) } },
          x: { ticks: { maxTicksLimit: 6, autoSkip: true } },
        },
      },
    });
    return () => chart.current?.destroy();
  }, []);
  useEffect(() => {
    const c = chart.current;
    if (!c) return;
    c.data.labels = labels;
    c.data.datasets = series.map((s, i) => ({
      label: s.label,
      data: s.data,
      borderColor: s.color ?? PALETTE[i % PALETTE.length],
      backgroundColor: (s.color ?? PALETTE[i % PALETTE.length]) + "22",
      fill: series.length === 1,
      tension: 0.25,
      spanGaps: false, // a null (an hour without requests) is a gap, not a 0
      pointRadius: s.data.map((v, j) => (v !== null && (j === 0 || s.data[j - 1] === null) && (j === s.data.length - 1 || s.data[j + 1] === null) ? 3 : 0)),
      borderWidth: 2,
    }));
    c.update();
  }, [labels.join("|"), JSON.stringify(series)]);
  const empty = labels.length === 0;
  // For tests and screen readers: how many points carry a value and how many are gaps.
  const values = series.flatMap((s) => s.data);
  return (
    <div class="chart-card" data-testid={testid} data-points={values.filter((v) => v !== null).length} data-gaps={values.filter((v) => v === null).length}>
      <div class="chart-title">{title}</div>
      <div class="chart-box">
        <canvas ref={canvas} />
        {empty && <div class="chart-empty">{loading ? "Loading…" : "No data"}</div>}
      </div>
    </div>
  );
}

export function Modal({ title, onClose, children }: { title: string; onClose: () => void; children: ComponentChildren }) {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  return (
    <div class="modal-backdrop" onClick={(e) => e.target === e.currentTarget && onClose()}>
      <div class="modal" role="dialog" aria-modal="true" aria-label={title}>
        <div class="modal-head">
          <h3>{title}</h3>
          <button type="button" class="btn ghost small" aria-label="Close" onClick={onClose}>
            ✕
          </button>
        </div>
        {children}
      </div>
    </div>
  );
}

export function Stat({ label, value, raw, testid }: { label: string; value: string; raw?: number | null; testid?: string }) {
  return (
    <div class="stat">
      <div class="stat-label">{label}</div>
      <div class="stat-value" data-testid={testid} data-value={raw ?? ""}>
        {value}
      </div>
    </div>
  );
}

export function hourLabel(iso: string): string {
  const d = new Date(iso);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}
