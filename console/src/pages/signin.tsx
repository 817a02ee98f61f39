import { useState } from "preact/hooks";
import { setKey, whoAmI, type Me } from "../api";

export function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [key, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setKey(key.trim());
    try {
      onSignedIn(await whoAmI());
    } catch (err) {
      setKey(null);
      setError(`Sign-in failed: ${(err as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="signin">
      <form class="signin-card" onSubmit={submit}>
        <div class="brand big">
          <span class="logo" aria-hidden="true" />
          torpor
        </div>
        <p class="muted">Sign in with an API key. It is kept in this browser tab's session storage only.</p>
        <label>
          API key
          <input name="key" type="password" autocomplete="off" placeholder="tp-…" value={key} onInput={(e) => setValue((e.target as HTMLInputElement).value)} required />
        </label>
        {error && (
          <div class="error-box" role="alert">
            {error}
          </div>
        )}
        <button class="btn primary" type="submit" disabled={busy || !key.trim()}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p class="muted small">The admin key of a fresh install is in ~/.torpor/admin.key.</p>
      </form>
    </div>
  );
}
