import { useEffect, useRef, useState } from "preact/hooks";
import { api, authHeaders, type Deployment } from "../api";
import { Badge, ErrorBox, usePoll } from "../components";
import { catalogInfo, deriveLifecycle, LIFECYCLE_LABEL } from "../util";

/** Pull a playable URL out of the answers video engines give (URL, data URL or base64). */
async function videoUrlOf(res: Response): Promise<string> {
  const type = res.headers.get("content-type") ?? "";
  if (type.startsWith("video/")) return URL.createObjectURL(await res.blob());
  const body = await res.json();
  const item = body?.data?.[0] ?? body;
  if (item?.url) return item.url;
  const b64 = item?.b64_json ?? item?.video ?? item?.b64;
  if (typeof b64 === "string") {
    if (b64.startsWith("data:")) return b64;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return URL.createObjectURL(new Blob([bytes], { type: "video/mp4" }));
  }
  throw new Error("The engine's answer holds no video");
}

export function VideoView({ name }: { name: string }) {
  const [dep, depError] = usePoll(() => api<Deployment>(`/api/deployments/${encodeURIComponent(name)}`), 3000, [name]);
  const [prompt, setPrompt] = useState("");
  const [busy, setBusy] = useState(false);
  const [started, setStarted] = useState<number | null>(null);
  const [now, setNow] = useState(Date.now());
  const [src, setSrc] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const abort = useRef<AbortController | null>(null);

  useEffect(() => {
    if (started === null) return;
    const t = window.setInterval(() => setNow(Date.now()), 250);
    return () => window.clearInterval(t);
  }, [started]);
  useEffect(() => () => abort.current?.abort(), []);

  const generate = async (e: Event) => {
    e.preventDefault();
    if (!prompt.trim()) return;
    setBusy(true);
    setError(null);
    setStarted(Date.now());
    const ctrl = new AbortController();
    abort.current = ctrl;
    try {
      const res = await fetch("/v1/videos/generations", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ model: name, prompt: prompt.trim() }),
        signal: ctrl.signal,
      });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        throw new Error(body?.error?.message ?? `HTTP ${res.status}`);
      }
      setSrc(await videoUrlOf(res));
    } catch (err) {
      if ((err as Error).name !== "AbortError") setError((err as Error).message);
    } finally {
      setBusy(false);
      setStarted(null);
    }
  };

  const life = dep ? deriveLifecycle(dep) : null;
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
      {dep && catalogInfo(dep).type !== "video-generation" && (
        <div class="error-box" role="alert" data-testid="not-video">
          {name} is a {catalogInfo(dep).type} model, not a video-generation one: it will not answer a video request.{" "}
          {["chat", "code"].includes(catalogInfo(dep).type) && <a href={`#/playground/${encodeURIComponent(name)}`}>Open it in the playground</a>}
        </div>
      )}
      <form class="panel video-form" onSubmit={generate}>
        <label>
          Prompt
          <textarea rows={3} aria-label="Video prompt" value={prompt} onInput={(e) => setPrompt((e.target as HTMLTextAreaElement).value)} placeholder="A red fox running through fresh snow at dawn" />
        </label>
        <div class="row">
          <button class="btn primary" type="submit" disabled={busy || !prompt.trim()}>
            {busy ? "Generating…" : "Generate"}
          </button>
          {busy && (
            <button type="button" class="btn danger" onClick={() => abort.current?.abort()}>
              Stop
            </button>
          )}
          {busy && started !== null && (
            <span class="muted" data-testid="warming">
              {life === "active" ? "Generating" : "Warming up"}… {((now - started) / 1000).toFixed(1)} s
            </span>
          )}
        </div>
      </form>
      <ErrorBox error={error} />
      <div class="panel video-box">{src ? <video controls autoplay loop src={src} class="player" /> : <div class="empty">The generated video plays here.</div>}</div>
    </section>
  );
}
