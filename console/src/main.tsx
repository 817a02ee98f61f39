import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./styles.css";
import { getKey, setKey, whoAmI, type Me } from "./api";
import { SignIn } from "./pages/signin";
import { Catalog } from "./pages/catalog";
import { Playground } from "./pages/playground";
import { VideoView } from "./pages/video";
import { Dashboard } from "./pages/dashboard";
import { DeploymentList } from "./pages/deployments";
import { Wizard } from "./pages/wizard";
import { DeploymentDetail } from "./pages/detail";
import { Keys } from "./pages/keys";

function useHash(): string {
  const [hash, setHash] = useState(location.hash.slice(1) || "/catalog");
  useEffect(() => {
    const on = () => setHash(location.hash.slice(1) || "/catalog");
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return hash;
}

export function go(path: string): void {
  location.hash = path;
}

const NAV: [string, string, boolean][] = [
  ["/catalog", "Catalog", false],
  ["/playground", "Playground", false],
  ["/dashboard", "GPU dashboard", false],
  ["/deployments", "Deployments", false],
  ["/keys", "API keys", true],
];

function App() {
  const hash = useHash();
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(!!getKey());
  const [menu, setMenu] = useState(false);

  useEffect(() => {
    if (!getKey()) return;
    whoAmI()
      .then(setMe)
      .catch(() => setKey(null))
      .finally(() => setChecking(false));
  }, []);
  useEffect(() => setMenu(false), [hash]);

  if (checking) return <div class="boot">Loading…</div>;
  if (!me) return <SignIn onSignedIn={setMe} />;

  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  let page;
  switch (parts[0]) {
    case "playground":
      page = <Playground name={parts[1] ?? null} conversation={params.get("c")} />;
      break;
    case "video":
      page = <VideoView name={parts[1] ?? ""} />;
      break;
    case "dashboard":
      page = <Dashboard me={me} />;
      break;
    case "deployments":
      if (parts[1] === "new") page = <Wizard />;
      else if (parts[1]) page = <DeploymentDetail name={parts[1]} tab={parts[2] ?? "overview"} me={me} />;
      else page = <DeploymentList me={me} />;
      break;
    case "keys":
      page = <Keys me={me} />;
      break;
    default:
      page = <Catalog me={me} />;
  }
  const signOut = () => {
    setKey(null);
    setMe(null);
    go("/catalog");
  };
  return (
    <div class="shell">
      <header class="topbar">
        <a class="brand" href="#/catalog">
          <span class="logo" aria-hidden="true" />
          torpor
        </a>
        <button type="button" class="btn ghost menu-toggle" aria-label="Menu" onClick={() => setMenu(!menu)}>
          ☰
        </button>
        <nav class={`nav ${menu ? "open" : ""}`}>
          {NAV.filter(([, , adminOnly]) => !adminOnly || me.admin).map(([href, label]) => (
            <a href={`#${href}`} class={`/${parts[0] ?? "catalog"}` === href ? "on" : ""}>
              {label}
            </a>
          ))}
        </nav>
        <div class="who">
          <span class="who-name" title={me.id}>
            {me.name}
            {me.admin ? " (admin)" : ""}
          </span>
          <button type="button" class="btn small ghost" onClick={signOut}>
            Sign out
          </button>
        </div>
      </header>
      <main class="content">{page}</main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
