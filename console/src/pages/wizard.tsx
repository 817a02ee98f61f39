import { useState } from "preact/hooks";
import { api, type Deployment } from "../api";
import { ErrorBox, usePoll } from "../components";
import { MODEL_TYPES, NAME_RULE, nameError } from "../util";
import { cleanOptions, FRAMEWORKS, frameworkById, parseArgs, parseEnv } from "./frameworks";

export function Wizard() {
  const [existing] = usePoll(() => api<{ data: Deployment[] }>("/api/deployments"), 0);
  const taken = (existing?.data ?? []).map((d) => d.name);
  const [step, setStep] = useState(1);
  const [name, setName] = useState("");
  const [touched, setTouched] = useState(false);
  const [description, setDescription] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [vendor, setVendor] = useState("");
  const [modelType, setModelType] = useState("");
  const [framework, setFramework] = useState("llama.cpp");
  const [model, setModel] = useState("smollm2-135m-instruct");
  const [options, setOptions] = useState<Record<string, string>>({});
  const [gpus, setGpus] = useState(0);
  const [minW, setMinW] = useState(0);
  const [maxW, setMaxW] = useState(1);
  const [concurrency, setConcurrency] = useState(4);
  const [idle, setIdle] = useState(300);
  const [env, setEnv] = useState("");
  const [args, setArgs] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const fw = frameworkById(framework);
  const nErr = nameError(name, taken);
  const missing = fw.options.filter((o) => o.required && !(options[o.key] ?? "").trim()).map((o) => o.label);
  const step2Err =
    fw.modelRequired && !model.trim()
      ? `${fw.modelLabel} is required`
      : missing.length
        ? `${missing.join(", ")} is required`
        : maxW < minW
          ? "Max workers must be at least min workers"
          : null;

  const spec = {
    name,
    description,
    framework,
    model: model.trim(),
    options: cleanOptions(fw, options),
    gpus,
    min_workers: minW,
    max_workers: maxW,
    concurrency,
    idle_timeout_s: idle,
    env: parseEnv(env),
    framework_args: parseArgs(args),
    ...(displayName.trim() || vendor.trim() || modelType
      ? {
          catalog: {
            ...(displayName.trim() ? { display_name: displayName.trim() } : {}),
            ...(vendor.trim() ? { vendor: vendor.trim() } : {}),
            ...(modelType ? { type: modelType } : {}),
          },
        }
      : {}),
  };

  const deploy = async () => {
    setBusy(true);
    setError(null);
    try {
      const d = await api<Deployment>("/api/deployments", { method: "POST", json: spec });
      location.hash = `#/deployments/${encodeURIComponent(d.name)}`;
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };

  const num = (set: (n: number) => void) => (e: Event) => set(Number((e.target as HTMLInputElement).value));
  return (
    <section class="wizard">
      <div class="page-head">
        <div>
          <h1>New deployment</h1>
          <p class="muted">Three steps: basics, framework and resources, review.</p>
        </div>
      </div>
      <ol class="steps">
        {["Basic information", "Framework, model and resources", "Review and deploy"].map((label, i) => (
          <li class={step === i + 1 ? "on" : step > i + 1 ? "done" : ""}>
            <span class="step-no">{i + 1}</span> {label}
          </li>
        ))}
      </ol>
      <div class="panel">
        {step === 1 && (
          <div class="form" data-step="1">
            <label>
              Name
              <input
                name="name"
                autocomplete="off"
                value={name}
                aria-invalid={touched && !!nErr}
                onInput={(e) => {
                  setName((e.target as HTMLInputElement).value);
                  setTouched(true);
                }}
                placeholder="my-model"
              />
              {touched && nErr ? (
                <span class="field-error" role="alert" data-testid="name-error">
                  {nErr}
                </span>
              ) : (
                <span class="help">{NAME_RULE}</span>
              )}
            </label>
            <label>
              Description
              <textarea name="description" rows={2} value={description} onInput={(e) => setDescription((e.target as HTMLTextAreaElement).value)} />
            </label>
            <div class="form-sub">Catalog (optional: derived from the model when left empty)</div>
            <div class="grid-form">
              <label>
                Display name
                <input name="display_name" value={displayName} onInput={(e) => setDisplayName((e.target as HTMLInputElement).value)} />
              </label>
              <label>
                Vendor
                <input name="vendor" value={vendor} onInput={(e) => setVendor((e.target as HTMLInputElement).value)} />
              </label>
              <label>
                Type
                <select name="type" value={modelType} onChange={(e) => setModelType((e.target as HTMLSelectElement).value)}>
                  <option value="">derived</option>
                  {MODEL_TYPES.map((t) => (
                    <option value={t}>{t}</option>
                  ))}
                </select>
              </label>
            </div>
            <div class="wizard-nav">
              <a class="btn ghost" href="#/deployments">
                Cancel
              </a>
              <button type="button" class="btn primary" disabled={!!nErr} onClick={() => setStep(2)}>
                Next
              </button>
            </div>
          </div>
        )}
        {step === 2 && (
          <div class="form" data-step="2">
            <label>
              Framework
              <select
                name="framework"
                value={framework}
                onChange={(e) => {
                  const id = (e.target as HTMLSelectElement).value;
                  setFramework(id);
                  setOptions({});
                  setModel(frameworkById(id).defaultModel ?? "");
                }}
              >
                {FRAMEWORKS.map((f) => (
                  <option value={f.id}>{f.label}</option>
                ))}
              </select>
            </label>
            <label>
              {fw.modelLabel}
              <input name="model" value={model} placeholder={fw.modelPlaceholder} onInput={(e) => setModel((e.target as HTMLInputElement).value)} />
            </label>
            {fw.options.length > 0 && <div class="form-sub">{fw.label} options</div>}
            {fw.options.map((o) => (
              <label>
                {o.label}
                {o.required ? " *" : ""}
                <input
                  name={`option-${o.key}`}
                  type="text"
                  inputMode={o.kind === "number" ? "decimal" : "text"}
                  value={options[o.key] ?? ""}
                  placeholder={o.placeholder}
                  onInput={(e) => setOptions({ ...options, [o.key]: (e.target as HTMLInputElement).value })}
                />
                {o.help && <span class="help">{o.help}</span>}
              </label>
            ))}
            <div class="form-sub">Resources and scaling</div>
            <div class="grid-form">
              <label>
                GPUs per worker
                <input name="gpus" type="number" min="0" value={gpus} onInput={num(setGpus)} />
              </label>
              <label>
                Min workers
                <input name="min_workers" type="number" min="0" value={minW} onInput={num(setMinW)} />
              </label>
              <label>
                Max workers
                <input name="max_workers" type="number" min="1" value={maxW} onInput={num(setMaxW)} />
              </label>
              <label>
                Concurrency
                <input name="concurrency" type="number" min="1" value={concurrency} onInput={num(setConcurrency)} />
              </label>
              <label>
                Idle timeout (s)
                <input name="idle_timeout_s" type="number" min="0" value={idle} onInput={num(setIdle)} />
              </label>
            </div>
            <label>
              Environment <span class="muted small">(KEY=value, one a line)</span>
              <textarea name="env" rows={2} value={env} onInput={(e) => setEnv((e.target as HTMLTextAreaElement).value)} />
            </label>
            <label>
              Extra engine arguments
              <input name="framework_args" value={args} placeholder="--n_ctx 2048" onInput={(e) => setArgs((e.target as HTMLInputElement).value)} />
            </label>
            {step2Err && <span class="field-error">{step2Err}</span>}
            <div class="wizard-nav">
              <button type="button" class="btn ghost" onClick={() => setStep(1)}>
                Back
              </button>
              <button type="button" class="btn primary" disabled={!!step2Err} onClick={() => setStep(3)}>
                Next
              </button>
            </div>
          </div>
        )}
        {step === 3 && (
          <div class="form" data-step="3">
            <div class="kv">
              <span>Name</span>
              <span>{name}</span>
              <span>Framework</span>
              <span>{fw.label}</span>
              <span>Model</span>
              <span>{model || "–"}</span>
              <span>Workers</span>
              <span>
                {minW}–{maxW} × {concurrency} concurrent, {gpus} GPU each
              </span>
            </div>
            <pre class="code" data-testid="review-spec">
              {JSON.stringify({ ...spec, env: Object.fromEntries(Object.keys(spec.env).map((k) => [k, "••••"])) }, null, 2)}
            </pre>
            <ErrorBox error={error} />
            <div class="wizard-nav">
              <button type="button" class="btn ghost" onClick={() => setStep(2)}>
                Back
              </button>
              <button type="button" class="btn primary" disabled={busy} onClick={deploy}>
                {busy ? "Deploying…" : "Deploy"}
              </button>
            </div>
          </div>
        )}
      </div>
    </section>
  );
}
