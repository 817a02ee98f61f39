// Form fields shared by the create wizard and the settings tab: a framework's own options
// (drawn from the server's description) and the rest of the spec.
import type { Extras, Framework, OptionValues } from "./frameworks";

export function OptionInputs({ fw, values, onChange }: { fw: Framework; values: OptionValues; onChange: (v: OptionValues) => void }) {
  if (fw.options.length === 0) return null;
  return (
    <>
      <div class="form-sub">{fw.label} options</div>
      <div class="grid-form">
        {fw.options.map((o) => {
          const name = `option-${o.key}`;
          const set = (v: string | boolean) => onChange({ ...values, [o.key]: v });
          if (o.kind === "boolean") {
            return (
              <label class="inline align-end" title={o.help}>
                <input type="checkbox" name={name} checked={values[o.key] === true} onChange={(e) => set((e.target as HTMLInputElement).checked)} /> {o.label}
              </label>
            );
          }
          const text = typeof values[o.key] === "string" ? (values[o.key] as string) : "";
          return (
            <label class={o.kind === "text" || o.kind === "list" ? "span-2" : ""}>
              {o.label}
              {o.required ? " *" : ""}
              {o.kind === "choice" ? (
                <select name={name} value={text} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
                  <option value="">default</option>
                  {o.choices.map((c) => (
                    <option value={c}>{c}</option>
                  ))}
                </select>
              ) : o.kind === "list" ? (
                <textarea name={name} rows={2} value={text} placeholder={o.placeholder} onInput={(e) => set((e.target as HTMLTextAreaElement).value)} />
              ) : (
                <input
                  name={name}
                  type="text"
                  inputMode={o.kind === "integer" ? "numeric" : o.kind === "number" ? "decimal" : "text"}
                  value={text}
                  placeholder={o.placeholder}
                  onInput={(e) => set((e.target as HTMLInputElement).value)}
                />
              )}
              {o.help && <span class="help">{o.help}</span>}
            </label>
          );
        })}
      </div>
    </>
  );
}

export function ExtrasInputs({ value, onChange, gpus }: { value: Extras; onChange: (e: Extras) => void; gpus: boolean }) {
  const text = (key: keyof Extras, label: string, placeholder = "", help = "") => (
    <label>
      {label}
      <input name={key} type="text" value={String(value[key])} placeholder={placeholder} onInput={(e) => onChange({ ...value, [key]: (e.target as HTMLInputElement).value })} />
      {help && <span class="help">{help}</span>}
    </label>
  );
  return (
    <>
      <div class="form-sub">Requests</div>
      <div class="grid-form">
        {text("wait_time_s", "Wait time (s)", "120", "How long a request may wait for a slot.")}
        {text("max_queue", "Max queue", "100", "Waiting requests; more get 429.")}
        <label class="inline align-end">
          <input type="checkbox" name="async_enabled" checked={value.async_enabled} onChange={(e) => onChange({ ...value, async_enabled: (e.target as HTMLInputElement).checked })} /> Accept async
          requests
        </label>
      </div>
      {gpus && (
        <>
          <div class="form-sub">Accelerators</div>
          <div class="grid-form">
            <label>
              Accelerator kind
              <select name="accelerator" value={value.accelerator} onChange={(e) => onChange({ ...value, accelerator: (e.target as HTMLSelectElement).value })}>
                <option value="nvidia.com/gpu">NVIDIA GPU</option>
                <option value="furiosa.ai/rngd">Furiosa RNGD</option>
              </select>
            </label>
            {text("gpu_type", "GPU type", "any", "A device model, e.g. H100 or A100-80GB.")}
          </div>
        </>
      )}
      <div class="form-sub">Model storage</div>
      <div class="grid-form">
        {text("storage_gb", "Storage (GB)", "100")}
        {text("revision", "Hugging Face revision", "main")}
      </div>
      <div class="form-sub">Prices and budgets (empty: the server's defaults, no cap)</div>
      <div class="grid-form">
        {text("prompt_per_mtok", "Prompt $ / M tokens")}
        {text("completion_per_mtok", "Completion $ / M tokens")}
        {text("gpu_hourly", "GPU $ / hour")}
        {text("storage_gb_month", "Storage $ / GB-month")}
        {text("budget_usd_monthly", "Monthly budget ($)")}
        {text("budget_tokens_monthly", "Monthly token budget")}
      </div>
    </>
  );
}
