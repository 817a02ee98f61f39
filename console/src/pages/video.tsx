import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, authHeaders, type Deployment } from "../api";
import { Badge, ErrorBox, usePoll } from "../components";
import { catalogInfo, deriveLifecycle, LIFECYCLE_LABEL } from "../util";

/** A video job as vLLM-Omni (and OpenAI) describe it: created by POST /v1/videos, polled by
 * GET /v1/videos/{id}, its clip at GET /v1/videos/{id}/content once `completed`. */
interface VideoJob {
  id: string;
  status: "queued" | "in_progress" | "completed" | "failed";
  progress?: number;
  seconds?: string;
  size?: string;
  error?: { code?: string | number; message?: string } | null;
}

const POLL_MS = 1000;
const SECONDS = ["2", "4", "8"];
const STATUS_LABEL: Record<VideoJob["status"], string> = {
  queued: "Queued",
  in_progress: "Generating",
  completed: "Done",
  failed: "Failed",
};

function isVideoModel(dep: Deployment): boolean {
  return dep.framework === "vllm-omni" || catalogInfo(dep).type === "video-generation";
}

function wait(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      window.clearTimeout(t);
      reject(new DOMException("stopped", "AbortError"));
    });
  });
}

export function VideoView({ name }: { name: string }) {
  const [dep, depError] = usePoll(() => api<Deployment>(`/api/deployments/${encodeURIComponent(name)}`), 3000, [name]);
  const [prompt, setPrompt] = useState("");
  const [seconds, setSeconds] = useState("2");
  const [job, setJob] = useState<VideoJob | null>(null);
  const [busy, setBusy] = useState(false);
  const [started, setStarted] = useState<number | null>(null);
  const [now, setNow] = useState(Date.now());
  const [src, setSrc] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const abort = useRef<AbortController | null>(null);

  // Another deployment means another view (main.tsx keys it by name); this one lets go of
  // its polling and its clip when it goes.
  useEffect(
    () => () => {
      abort.current?.abort();
    },
    [],
  );
  useEffect(() => () => void (src && URL.revokeObjectURL(src)), [src]);
  useEffect(() => {
    if (started === null) return;
    const t = window.setInterval(() => setNow(Date.now()), 250);
    return () => window.clearInterval(t);
  }, [started]);

  const run = async (ctrl: AbortController) => {
    const form = new FormData();
    form.append("model", name);
    form.append("prompt", prompt.trim());
    form.append("seconds", seconds);
    let current = await api<VideoJob>("/v1/videos", { method: "POST", body: form, signal: ctrl.signal });
    setJob(current);
    const path = `/v1/videos/${encodeURIComponent(current.id)}`;
    while (current.status === "queued" || current.status === "in_progress") {
      await wait(POLL_MS, ctrl.signal);
      current = await api<VideoJob>(path, { signal: ctrl.signal });
      setJob(current);
    }
    if (current.status === "failed") {
      throw new Error(current.error?.message ?? "The video job failed");
    }
    const res = await fetch(`${path}/content`, { headers: authHeaders(), signal: ctrl.signal });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new ApiError(res.status, body?.error?.message ?? `HTTP ${res.status}`);
    }
    const blob = await res.blob();
    if (!blob.type.startsWith("video/")) throw new Error(`The engine sent ${blob.type || "no type"}, not a video`);
    setSrc(URL.createObjectURL(blob));
  };

  const generate = async (e: Event) => {
    e.preventDefault();
    if (!prompt.trim() || busy) return;
    abort.current?.abort();
    const ctrl = new AbortController();
    abort.current = ctrl;
    setBusy(true);
    setError(null);
    setJob(null);
    setSrc(null);
    setStarted(Date.now());
    try {
      await run(ctrl);
    } catch (err) {
      if ((err as Error).name !== "AbortError") setError((err as Error).message);
    } finally {
      if (abort.current === ctrl) {
        setBusy(false);
        setStarted(null);
      }
    }
  };

  const stop = () => {
    abort.current?.abort();
    setBusy(false);
    setStarted(null);
    if (job && (job.status === "queued" || job.status === "in_progress")) {
      // The engine may stop the job; either way its result is not wanted any more.
      void fetch(`/v1/videos/${encodeURIComponent(job.id)}`, { method: "DELETE", headers: authHeaders() }).catch(() => undefined);
      setJob({ ...job, status: "failed", error: { message: "Stopped" } });
    }
  };

  const life = dep ? deriveLifecycle(dep) : null;
  const video = dep ? isVideoModel(dep) : true;
  const progress = job?.status === "completed" ? 100 : (job?.progress ?? 0);
  const elapsed = started !== null ? ((now - started) / 1000).toFixed(1) : null;
  let status: string | null = null;
  if (busy && !job) status = life === "active" ? "Creating the job…" : "Warming up…";
  else if (job && busy) status = job.status === "in_progress" ? `${STATUS_LABEL.in_progress} ${progress}%` : job.status === "completed" ? "Downloading the clip…" : STATUS_LABEL[job.status];
  else if (job) status = STATUS_LABEL[job.status];
  return (
    <section>
      <div class="page-head">
        <div>
          <h1>{dep ? catalogInfo(dep).displayName : name}</h1>
          <p class="muted">Text to video · {name}</p>
        </div>
        {life && <Badge value={life} label={LIFECYCLE_LABEL[life]} testid="lifecycle" />}
      </div>
      <ErrorBox error={depError} />
      {dep && !video && (
        <div class="error-box" role="alert" data-testid="not-video">
          {name} is a {catalogInfo(dep).type} model, not a video-generation one: it serves no video jobs (/v1/videos).{" "}
          {["chat", "code"].includes(catalogInfo(dep).type) && <a href={`#/playground/${encodeURIComponent(name)}`}>Open it in the playground</a>}
        </div>
      )}
      <form class="panel video-form" onSubmit={generate}>
        <label>
          Prompt
          <textarea rows={3} aria-label="Video prompt" value={prompt} onInput={(e) => setPrompt((e.target as HTMLTextAreaElement).value)} placeholder="A red fox running through fresh snow at dawn" />
        </label>
        <div class="row">
          <label>
            Length{" "}
            <select aria-label="Video length" value={seconds} onChange={(e) => setSeconds((e.target as HTMLSelectElement).value)}>
              {SECONDS.map((s) => (
                <option value={s} key={s}>
                  {s} s
                </option>
              ))}
            </select>
          </label>
          <button class="btn primary" type="submit" disabled={busy || !prompt.trim() || !video}>
            {busy ? "Generating…" : "Generate"}
          </button>
          {busy && (
            <button type="button" class="btn danger" onClick={stop}>
              Stop
            </button>
          )}
        </div>
        {status && (
          <div class="row" data-testid="video-status" data-status={job?.status ?? "creating"} style={{ flexWrap: "wrap" }}>
            <span class="muted" style={{ overflowWrap: "anywhere", minWidth: 0 }}>
              {status}
              {elapsed !== null && ` · ${elapsed} s`}
              {job && <span data-testid="video-job"> · {job.id}</span>}
            </span>
            <progress data-testid="video-progress" max={100} value={progress} style={{ width: "100%" }} aria-label="Video progress" />
          </div>
        )}
      </form>
      <ErrorBox error={error} />
      <div class="panel video-box">
        {src ? <video controls autoplay loop muted playsInline src={src} class="player" data-testid="video-player" /> : <div class="empty">The generated video plays here.</div>}
      </div>
    </section>
  );
}
