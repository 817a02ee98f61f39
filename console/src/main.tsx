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

/** The browser tab's title for a route: the page, and the deployment it is about. */
export function pageTitle(parts: string[]): string {
  const [page, name, tab] = parts;
  const label: Record<string, string> = {
    playground: "Playground",
    video: "Video",
    dashboard: "GPU dashboard",
    deployments: "Deployments",
    keys: "API keys",
    catalog: "Catalog",
  };
  let title = label[page ?? "catalog"] ?? "Catalog";
  if (page === "deployments" && name === "new") title = "New deployment";
  else if (page === "deployments" && name) title = `${name}${tab && tab !== "overview" ? ` · ${tab}` : ""} · Deployments`;
  else if ((page === "playground" || page === "video") && name) title = `${name} · ${title}`;
  return `${title} · torpor`;
}

/** Label every cell of a `table.stack` with its column's header, so narrow screens can show
 * each row as a card (see styles.css); kept up to date as tables re-render. */
function labelStackTables(root: HTMLElement): void {
  const label = () => {
    root.querySelectorAll<HTMLTableElement>("table.stack").forEach((table) => {
      const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent?.trim() ?? "");
      table.querySelectorAll("tbody tr").forEach((tr) =>
        [...tr.children].forEach((td, i) => {
          const want = heads[i] ?? "";
          if ((td as HTMLElement).dataset.label !== want) (td as HTMLElement).dataset.label = want;
        }),
      );
    });
  };
  new MutationObserver(label).observe(root, { childList: true, subtree: true });
  label();
}

const NAV: [string, string, boolean][] = [
  ["/catalog", "Catalog", false],
  ["/playground", "Playground", false],
  ["/dashboard", "GPU dashboard", false],
  ["/deployments", "Deployments", false],
  ["/keys", "API keys", false],
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
  useEffect(() => {
    const path = hash.split("?")[0];
    document.title = me ? pageTitle(path.split("/").filter(Boolean).map(decodeURIComponent)) : "Sign in · torpor";
  }, [hash, me]);

  if (checking) return <div class="boot">Loading…</div>;
  if (!me) return <SignIn onSignedIn={setMe} />;

  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  let page;
  switch (parts[0]) {
    case "playground":
      page = <Playground key={parts[1] ?? ""} name={parts[1] ?? null} conversation={params.get("c")} />;
      break;
    case "video":
      // Keyed by deployment: another one's prompt, video or error never carries over.
      page = <VideoView key={parts[1] ?? ""} name={parts[1] ?? ""} />;
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

const root = document.getElementById("app")!;
labelStackTables(root);
render(<App />, root);
