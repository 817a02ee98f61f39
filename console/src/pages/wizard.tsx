import { useEffect, useState } from "preact/hooks";
import { api, type Deployment } from "../api";
import { Empty, ErrorBox, usePoll } from "../components";
import { MODEL_TYPES, NAME_RULE, nameError } from "../util";
import { cleanOptions, extrasOf, extrasToSpec, frameworkByName, loadFrameworks, parseArgs, parseEnv, type OptionValues } from "./frameworks";
import { ExtrasInputs, OptionInputs } from "./specfields";

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
  const [options, setOptions] = useState<OptionValues>({});
  const [gpus, setGpus] = useState(0);
  const [minW, setMinW] = useState(0);
  const [maxW, setMaxW] = useState(1);
  const [concurrency, setConcurrency] = useState<number | null>(null); // null: the engine's
  const [idle, setIdle] = useState(300);
  const [env, setEnv] = useState("");
  const [args, setArgs] = useState("");
  const [extras, setExtras] = useState(extrasOf(null));
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [frameworks, fwError] = usePoll(loadFrameworks, 0);
  // A refusal belongs to the values it was about: any change clears it.
  useEffect(() => setError(null), [name, framework, model, JSON.stringify(options), gpus, minW, maxW, concurrency, idle, env, args, JSON.stringify(extras)]);

  const fw = frameworkByName(frameworks ?? [], framework);
  const nErr = nameError(name, taken);
  const missing = fw.options.filter((o) => o.required && !String(options[o.key] ?? "").trim()).map((o) => o.label);
  const step2Err =
    fw.model_required && !model.trim()
      ? `${fw.model_label} is required`
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
    gpus: fw.gpus ? gpus : 0,
    min_workers: minW,
    max_workers: maxW,
    ...(concurrency !== null ? { concurrency } : {}),
    idle_timeout_s: idle,
    env: parseEnv(env),
    framework_args: parseArgs(args),
    ...extrasToSpec(extras, false),
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

  // Step 2 -> 3: the server checks the spec as it would on create (nothing is created).
  const review = async () => {
    setBusy(true);
    setError(null);
    try {
      await api("/api/frameworks/validate", { method: "POST", json: spec });
      setStep(3);
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
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
        {step === 2 && !frameworks && (fwError ? <ErrorBox error={fwError} /> : <Empty>Loading frameworks…</Empty>)}
        {step === 2 && frameworks && (
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
                  setModel(frameworkByName(frameworks, id).default_model);
                }}
              >
                {frameworks
                  .filter((f) => f.creatable)
                  .map((f) => (
                    <option value={f.name}>{f.label}</option>
                  ))}
              </select>
            </label>
            <label>
              {fw.model_label}
              {fw.model_required ? " *" : ""}
              <input name="model" value={model} placeholder={fw.model_placeholder} onInput={(e) => setModel((e.target as HTMLInputElement).value)} />
              {fw.model_help && <span class="help">{fw.model_help}</span>}
            </label>
            <OptionInputs fw={fw} values={options} onChange={setOptions} />
            <div class="form-sub">Resources and scaling</div>
            <div class="grid-form">
              {fw.gpus && (
                <label>
                  GPUs per worker
                  <input name="gpus" type="number" min="0" value={gpus} onInput={num(setGpus)} />
                </label>
              )}
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
                <input
                  name="concurrency"
                  type="number"
                  min="1"
                  value={concurrency ?? ""}
                  placeholder={String(fw.default_concurrency)}
                  onInput={(e) => {
                    const v = (e.target as HTMLInputElement).value;
                    setConcurrency(v === "" ? null : Number(v));
                  }}
                />
                <span class="help">Requests per worker; {fw.label}'s default is {fw.default_concurrency}.</span>
              </label>
              <label>
                Idle timeout (s)
                <input name="idle_timeout_s" type="number" min="0" value={idle} onInput={num(setIdle)} />
              </label>
            </div>
            <ExtrasInputs value={extras} onChange={setExtras} gpus={fw.gpus} />
            <label>
              Environment <span class="muted small">(KEY=value, one a line)</span>
              <textarea name="env" rows={2} value={env} onInput={(e) => setEnv((e.target as HTMLTextAreaElement).value)} />
            </label>
            <label>
              Extra engine arguments
              <input name="framework_args" value={args} placeholder="--n_ctx 2048" onInput={(e) => setArgs((e.target as HTMLInputElement).value)} />
            </label>
            {step2Err && <span class="field-error">{step2Err}</span>}
            <ErrorBox error={error} />
            <div class="wizard-nav">
              <button type="button" class="btn ghost" onClick={() => setStep(1)}>
                Back
              </button>
              <button type="button" class="btn primary" disabled={!!step2Err || busy} onClick={review}>
                {busy ? "Checking…" : "Next"}
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
                {minW}–{maxW} × {concurrency ?? fw.default_concurrency} concurrent, {fw.gpus ? gpus : 0} GPU each
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
