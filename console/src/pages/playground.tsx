import { useEffect, useRef, useState } from "preact/hooks";
import { api, authHeaders, type Conversation, type Deployment } from "../api";
import { Badge, CopyButton, Empty, ErrorBox, Tabs, usePoll } from "../components";
import { renderMarkdown } from "../markdown";
import { catalogInfo, cleanAnswer, deriveLifecycle, fmtAgo, LIFECYCLE_LABEL, readSSE, splitThink, streamError } from "../util";

interface Msg {
  role: "user" | "assistant" | "system";
  content: string;
  error?: string;
  stopped?: boolean;
}

function AssistantText({ text, streaming }: { text: string; streaming: boolean }) {
  const segments = splitThink(text);
  return (
    <>
      {segments.map((s) =>
        s.kind === "think" ? (
          <details class="think" data-testid="think">
            <summary>{s.open && streaming ? "Thinking…" : "Reasoning"}</summary>
            <div class="think-body">{s.text.trim()}</div>
          </details>
        ) : (
          <div class="answer md" dangerouslySetInnerHTML={{ __html: renderMarkdown(s.text.replace(/^\s+/, "")) }} />
        ),
      )}
    </>
  );
}

// Raw responses kept for the JSON tab: enough for long answers, bounded for the page.
const RAW_LIMIT = 400_000;

/** The model a fresh playground opens on: a ready chat model, else one that can start. */
export function defaultModel(chatDeps: Deployment[]): string | null {
  const rank = (d: Deployment) => (d.status === "ready" ? 0 : d.status === "degraded" ? 1 : d.status === "error" ? 3 : 2);
  return [...chatDeps].sort((a, b) => rank(a) - rank(b))[0]?.name ?? null;
}

export function Playground({ name, conversation }: { name: string | null; conversation: string | null }) {
  const [fast, setFast] = useState(false);
  const [deps, , reloadDeps] = usePoll(() => api<{ data: Deployment[] }>("/api/deployments"), fast ? 1000 : 5000, [fast]);
  const chatDeps = (deps?.data ?? []).filter((d) => ["chat", "code"].includes(catalogInfo(d).type));
  const current = name ?? defaultModel(chatDeps);
  const dep = chatDeps.find((d) => d.name === current) ?? (deps?.data ?? []).find((d) => d.name === current);

  const [convs, convError, reloadConvs] = usePoll(() => api<{ data: Conversation[] }>("/api/conversations"), 0);
  const [convId, setConvId] = useState<string | null>(null);
  const [messages, setMessages] = useState<Msg[]>([]);
  const [input, setInput] = useState("");
  const [system, setSystem] = useState("");
  const [temperature, setTemperature] = useState(0.7);
  const [maxTokens, setMaxTokens] = useState(256);
  const [stop, setStop] = useState("");
  const [tab, setTab] = useState<"chat" | "json">("chat");
  const [lastRequest, setLastRequest] = useState<string | null>(null);
  const [lastResponse, setLastResponse] = useState<string | null>(null);
  const [streaming, setStreaming] = useState(false);
  const [warming, setWarming] = useState<number | null>(null); // ms timestamp when the wait began
  const [now, setNow] = useState(Date.now());
  const [error, setError] = useState<string | null>(null);
  const [showSettings, setShowSettings] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const scroller = useRef<HTMLDivElement>(null);

  // Open a saved conversation from the route (?c=id).
  useEffect(() => {
    if (!conversation) {
      setConvId(null);
      setMessages([]);
      return;
    }
    api<Conversation>(`/api/conversations/${encodeURIComponent(conversation)}`)
      .then((c) => {
        setConvId(c.id);
        setMessages((c.messages ?? []).filter((m) => m.role !== "system") as Msg[]);
        setSystem(c.system_prompt ?? "");
        const s = c.settings ?? {};
        if (typeof s.temperature === "number") setTemperature(s.temperature);
        if (typeof s.max_tokens === "number") setMaxTokens(s.max_tokens);
        if (Array.isArray(s.stop)) setStop(s.stop.join(", "));
      })
      .catch((e) => setError(String(e.message ?? e)));
  }, [conversation]);

  useEffect(() => {
    if (warming === null) return;
    const t = window.setInterval(() => setNow(Date.now()), 200);
    return () => window.clearInterval(t);
  }, [warming]);

  useEffect(() => {
    scroller.current?.scrollTo({ top: scroller.current.scrollHeight });
  }, [messages]);

  useEffect(() => () => abort.current?.abort(), []);

  const stopList = stop
    .split(/[,\n]/)
    .map((s) => s.trim())
    .filter(Boolean);

  const save = async (user: Msg, answer: Msg) => {
    const clean = [
      { role: "user", content: user.content },
      { role: "assistant", content: cleanAnswer(answer.content), ...(answer.stopped ? { stopped: true } : {}) },
    ];
    const settings = { temperature, max_tokens: maxTokens, stop: stopList };
    try {
      if (convId) {
        await api(`/api/conversations/${convId}`, { method: "PATCH", json: { append: clean, system_prompt: system, settings } });
      } else {
        const title = user.content.slice(0, 60) || "New conversation";
        const c = await api<Conversation>("/api/conversations", {
          method: "POST",
          json: { deployment: current, title, system_prompt: system, settings, messages: clean },
        });
        setConvId(c.id);
        history.replaceState(null, "", `#/playground/${encodeURIComponent(current!)}?c=${c.id}`);
      }
      reloadConvs();
    } catch (e) {
      setError(`Could not save the conversation: ${(e as Error).message}`);
    }
  };

  const send = async (e?: Event) => {
    e?.preventDefault();
    const text = input.trim();
    if (!text || !current || streaming) return;
    setError(null);
    const user: Msg = { role: "user", content: text };
    const history_ = messages.filter((m) => !m.error);
    const payload: Record<string, unknown> = {
      model: current,
      messages: [
        ...(system.trim() ? [{ role: "system", content: system.trim() }] : []),
        ...history_.map((m) => ({ role: m.role, content: m.role === "assistant" ? cleanAnswer(m.content) : m.content })),
        { role: "user", content: text },
      ],
      temperature,
      max_tokens: maxTokens,
      stream: true,
      stream_options: { include_usage: true },
      ...(stopList.length ? { stop: stopList } : {}),
    };
    const url = "/v1/chat/completions";
    const bodyText = JSON.stringify(payload, null, 2);
    setLastRequest(`POST ${url}\n\n${bodyText}`);
    setLastResponse(null);
    setInput("");
    const answer: Msg = { role: "assistant", content: "" };
    setMessages([...history_, user, answer]);
    setStreaming(true);
    setFast(true);
    const ctrl = new AbortController();
    abort.current = ctrl;
    const startedAt = Date.now();
    // A cold deployment holds the request at the gateway: say so, with the time waited.
    try {
      const d = await api<Deployment>(`/api/deployments/${encodeURIComponent(current)}`);
      if (d.ready_workers === 0) setWarming(startedAt);
    } catch {
      /* the chat request below reports real errors */
    }
    let raw = "";
    let content = "";
    let failed: string | null = null;
    const keep = (text: string) => {
      raw = (raw + text).slice(0, RAW_LIMIT);
    };
    const update = (patch: Partial<Msg>) => setMessages((ms) => [...ms.slice(0, -1), { ...ms[ms.length - 1], ...patch }]);
    try {
      const res = await fetch(url, {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: bodyText,
        signal: ctrl.signal,
      });
      raw = `HTTP ${res.status} ${res.statusText}\n\n`;
      if (!res.ok || !res.body) {
        const text = await res.text().catch(() => "");
        keep(text);
        let body: any = null;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON: the text is the message */
        }
        throw new Error(body?.error?.message ?? (text || `HTTP ${res.status}`));
      }
      await readSSE(
        res.body,
        (data) => {
          const err = streamError(data);
          if (err) {
            failed = err;
            return;
          }
          const delta = data?.choices?.[0]?.delta?.content ?? data?.choices?.[0]?.text ?? "";
          if (delta) {
            content += delta;
            setWarming(null);
            update({ content });
          }
        },
        () => setWarming((w) => w ?? startedAt),
        keep,
      );
      answer.content = content;
      if (failed) throw new Error(failed);
      if (!cleanAnswer(content)) throw new Error("The model sent an empty answer.");
    } catch (err) {
      const aborted = (err as Error).name === "AbortError";
      answer.content = content;
      if (aborted) {
        answer.stopped = true;
        update({ stopped: true });
        keep("\n[stopped by you]");
      } else {
        answer.error = (err as Error).message;
        update({ error: answer.error });
      }
    } finally {
      setLastResponse(raw);
      setWarming(null);
      setStreaming(false);
      setFast(false);
      abort.current = null;
      reloadDeps();
    }
    // Only real answers are saved: not an error, not an empty or stopped-before-a-word one.
    if (!answer.error && cleanAnswer(answer.content)) await save(user, answer);
  };

  const newChat = () => {
    abort.current?.abort();
    setConvId(null);
    setMessages([]);
    setLastRequest(null);
    setLastResponse(null);
    location.hash = `#/playground/${encodeURIComponent(current ?? "")}`;
  };

  const remove = async (id: string) => {
    await api(`/api/conversations/${id}`, { method: "DELETE" }).catch(() => null);
    if (id === convId) newChat();
    reloadConvs();
  };

  // While a request waits on a cold start, the model is warming up whatever the last poll said.
  const lifecycle = dep ? (warming !== null && deriveLifecycle(dep) !== "failed" ? "warming_up" : deriveLifecycle(dep)) : null;
  return (
    <section class="playground">
      <aside class="sidebar">
        <button type="button" class="btn primary block" onClick={newChat}>
          + New chat
        </button>
        <div class="sidebar-title">History</div>
        <ErrorBox error={convError} />
        {(convs?.data ?? []).length === 0 && <div class="muted small">No conversations yet.</div>}
        <ul class="conv-list">
          {(convs?.data ?? []).map((c) => (
            <li class={`conv-item ${c.id === convId ? "on" : ""}`} data-id={c.id}>
              <a href={`#/playground/${encodeURIComponent(c.deployment)}?c=${c.id}`} title={c.title}>
                <span class="conv-title">{c.title}</span>
                <span class="muted small">
                  {c.deployment} · {c.message_count} msgs · <time dateTime={c.updated_at}>{fmtAgo(c.updated_at)}</time>
                </span>
              </a>
              <button type="button" class="btn ghost small" aria-label="Delete conversation" onClick={() => remove(c.id)}>
                ✕
              </button>
            </li>
          ))}
        </ul>
      </aside>
      <div class="chat">
        <div class="chat-head">
          <select
            aria-label="Model"
            value={current ?? ""}
            onChange={(e) => {
              location.hash = `#/playground/${encodeURIComponent((e.target as HTMLSelectElement).value)}`;
            }}
          >
            {chatDeps.map((d) => (
              <option value={d.name}>{catalogInfo(d).displayName}</option>
            ))}
            {dep && !chatDeps.includes(dep) && <option value={dep.name}>{dep.name}</option>}
          </select>
          {lifecycle && <Badge value={lifecycle} label={LIFECYCLE_LABEL[lifecycle]} testid="lifecycle" />}
          <span class="spacer" />
          <Tabs tabs={[["chat", "Chat"], ["json", "JSON"]]} value={tab} onChange={setTab} />
          <button type="button" class="btn small ghost settings-toggle" onClick={() => setShowSettings(!showSettings)}>
            Settings
          </button>
        </div>
        <div class={`chat-body ${showSettings ? "with-settings" : ""}`}>
          <div class="chat-main">
            {tab === "chat" ? (
              <div class="messages" ref={scroller}>
                {!deps && <Empty>Loading…</Empty>}
                {!current && deps && <Empty>No chat or code deployment yet.</Empty>}
                {current && messages.length === 0 && <Empty>Send a message to {current}.</Empty>}
                {messages.map((m, i) => {
                  const live = streaming && i === messages.length - 1 && m.role === "assistant";
                  return (
                    <div class={`msg ${m.role}`} data-streaming={live ? "true" : "false"} data-stopped={m.stopped ? "true" : "false"}>
                      <div class="msg-role">{m.role === "user" ? "You" : current}</div>
                      {m.role === "assistant" ? <AssistantText text={m.content} streaming={live} /> : <div class="answer plain">{m.content}</div>}
                      {live && warming !== null && (
                        <div class="warming" data-testid="warming">
                          Warming up the model… waited {((now - warming) / 1000).toFixed(1)} s
                        </div>
                      )}
                      {live && warming === null && !m.content && <div class="typing">…</div>}
                      {m.stopped && <div class="muted small">Stopped.</div>}
                      {m.error && (
                        <div class="error-box" role="alert" data-testid="answer-error">
                          {m.error}
                        </div>
                      )}
                    </div>
                  );
                })}
              </div>
            ) : (
              <div class="json-view">
                <div class="panel-head">
                  <h4>Request</h4>
                  {lastRequest && <CopyButton text={lastRequest} label="Copy request" />}
                </div>
                <pre class="code" data-testid="json-request">
                  {lastRequest ?? "No request yet."}
                </pre>
                <div class="panel-head">
                  <h4>Response {lastResponse && lastRequest?.includes('"stream": true') ? <span class="muted small">(server-sent events, as received)</span> : null}</h4>
                  {lastResponse && <CopyButton text={lastResponse} label="Copy response" />}
                </div>
                <pre class="code" data-testid="json-response">
                  {lastResponse ?? (streaming ? "Streaming…" : "No response yet.")}
                </pre>
              </div>
            )}
            <ErrorBox error={error} />
            <form class="composer" onSubmit={send}>
              <textarea
                id="prompt"
                aria-label="Message"
                placeholder="Message…  (Enter to send, Shift+Enter for a new line)"
                value={input}
                rows={2}
                onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)}
                onKeyDown={(e) => {
                  if (e.key === "Enter" && !e.shiftKey) {
                    e.preventDefault();
                    send();
                  }
                }}
              />
              {streaming ? (
                <button type="button" class="btn danger" onClick={() => abort.current?.abort()}>
                  Stop
                </button>
              ) : (
                <button type="submit" class="btn primary" disabled={!input.trim() || !current}>
                  Send
                </button>
              )}
            </form>
          </div>
          <div class={`settings ${showSettings ? "open" : ""}`}>
            <label>
              System prompt
              <textarea aria-label="System prompt" rows={4} value={system} onInput={(e) => setSystem((e.target as HTMLTextAreaElement).value)} />
            </label>
            <label>
              Temperature <span class="muted">{temperature.toFixed(2)}</span>
              <input type="range" min="0" max="2" step="0.05" value={temperature} onInput={(e) => setTemperature(Number((e.target as HTMLInputElement).value))} />
            </label>
            <label>
              Max tokens
              <input type="number" min="1" max="32768" value={maxTokens} onInput={(e) => setMaxTokens(Math.max(1, Number((e.target as HTMLInputElement).value) || 1))} />
            </label>
            <label>
              Stop sequences <span class="muted small">(comma separated)</span>
              <input type="text" aria-label="Stop sequences" value={stop} onInput={(e) => setStop((e.target as HTMLInputElement).value)} />
            </label>
          </div>
        </div>
      </div>
    </section>
  );
}
