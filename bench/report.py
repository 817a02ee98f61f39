"""Results: one JSON and one Markdown file per benchmark (PNG plots beside them), and a
summary README over every result found in the output folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

ORDER = ("overhead", "coldstart", "burst", "controlplane", "affinity", "metering", "profile")


@dataclass
class Target:
    name: str
    target: str
    value: str
    # None: not measured in this run (say why in `note`).
    met: bool | None
    note: str = ""


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    benchmark: str
    title: str
    smoke: bool
    machine: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _met(t: Target) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[t.met]


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m.get('cpu_model')}, {m.get('cpu_count')} CPUs, {m.get('memory_gib')} GiB, "
        f"{m.get('os')}, Python {m.get('python')}, load {m.get('load_avg_1m')} at start, "
        f"commit {str(m.get('git_commit'))[:12]}{' (dirty)' if m.get('git_dirty') else ''}"
    )


def render_markdown(r: Result) -> str:
    out = [f"# {r.title}", ""]
    if r.smoke:
        out += ["**Smoke run** (small counts, seconds): numbers are not meaningful.", ""]
    out += [f"Machine: {machine_line(r.machine)}.", ""]
    pkgs = ", ".join(f"{k} {v}" for k, v in r.machine.get("packages", {}).items() if v)
    out += [f"Versions: {pkgs}.", "", f"Wall time: {r.wall_s:.0f} s.", ""]
    if r.targets:
        out += ["## Targets", ""]
        rows = [[t.name, t.target, t.value, _met(t), t.note] for t in r.targets]
        out += [_md_table(["target", "goal", "measured", "result", "note"], rows), ""]
    for t in r.tables:
        out += [f"## {t.title}", "", _md_table(t.headers, t.rows), ""]
    if r.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in r.notes] + [""]
    if r.plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in r.plots] + [""]
    out += ["## Configuration", "", "```json", _json(r.config).decode(), "```", ""]
    return "\n".join(out)


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)


def write(result: Result, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{result.benchmark}.json").write_bytes(_json(asdict(result)) + b"\n")
    (out_dir / f"{result.benchmark}.md").write_text(render_markdown(result))


# -- plots ------------------------------------------------------------------------------


def pyplot() -> Any | None:
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(result: Result, out_dir: Path, name: str, draw: Callable[[Any], None]) -> None:
    """Draw one PNG with `draw(plt)`; a missing matplotlib or a failed plot is noted."""
    plt = pyplot()
    if plt is None:
        if "matplotlib is not installed: no plots" not in result.notes:
            result.notes.append("matplotlib is not installed: no plots")
        return
    try:
        draw(plt)
        plt.tight_layout()
        plt.savefig(out_dir / name, dpi=100)
        result.plots.append(name)
    except Exception as exc:
        result.notes.append(f"plot {name} failed: {exc!r}")
    finally:
        plt.close("all")


# -- summary ----------------------------------------------------------------------------


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    found = []
    for name in ORDER:
        path = out_dir / f"{name}.json"
        if path.exists():
            with contextlib.suppress(orjson.JSONDecodeError):
                found.append(orjson.loads(path.read_bytes()))
    return found


def write_summary(out_dir: Path) -> Path:
    results = load_results(out_dir)
    out = ["# torpor benchmarks: results", ""]
    out += [
        "Produced by `python -m bench all` (see the Benchmarks section of the top-level "
        "README). Each benchmark has its own Markdown report, JSON data and plots here.",
        "",
    ]
    if any(r.get("smoke") for r in results):
        out += ["**Some results below come from a smoke run** and are not meaningful.", ""]
    if results:
        m = results[0]["machine"]
        out += [f"Machine: {machine_line(m)}.", ""]
        pkgs = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items() if v)
        out += [f"Versions: {pkgs}.", ""]
    rows = []
    for r in results:
        for t in r.get("targets", []):
            rows.append(
                [
                    f"[{r['benchmark']}]({r['benchmark']}.md)",
                    t["name"],
                    t["target"],
                    t["value"],
                    _met(Target(**t)),
                    t.get("note", ""),
                ]
            )
    if rows:
        out += ["## Targets", ""]
        out += [
            _md_table(["benchmark", "target", "goal", "measured", "result", "note"], rows),
            "",
        ]
    out += ["## Reports", ""]
    for r in results:
        out.append(
            f"- [{r['title']}]({r['benchmark']}.md) ([JSON]({r['benchmark']}.json)), "
            f"{r.get('wall_s', 0):.0f} s"
        )
    out.append("")
    findings = out_dir / "findings.md"
    if findings.exists():
        out += [findings.read_text().strip(), ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(out))
    return path
