"""What a person reads about a corpus: `report.md` in the artifact and the summary table in the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from autarky.data.read import plural


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def write_charts(out: Path, metrics: dict, lengths: list[int]) -> list[str]:
    """PNG charts beside report.md: languages, drops, lengths. Returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90, metadata={"Software": None})  # no version stamp: same bytes each run
        plt.close(fig)
        charts.append(name)

    languages = list(metrics["languages"].items())[:12]
    if languages:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        names = [k for k, _ in languages]
        left.bar(names, [v["documents"] for _, v in languages], color="#4c72b0")
        left.set_title("documents per language")
        right.bar(names, [v["bytes"] / 1e6 for _, v in languages], color="#55a868")
        right.set_title("MB per language")
        save(fig, "languages.png")
    drops = [(f"{step}: {reason}", n) for step, rs in metrics["dropped"].items() for reason, n in rs.items()]
    if drops:
        drops.sort(key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(8, 0.8 + 0.3 * len(drops)))
        ax.barh([k for k, _ in drops], [n for _, n in drops], color="#c44e52")
        ax.set_title("documents dropped, by step and reason")
        save(fig, "drops.png")
    if lengths:
        import numpy as np

        fig, ax = plt.subplots(figsize=(8, 3))
        bins = np.logspace(0, np.log10(max(lengths) + 1), 40)
        ax.hist(lengths, bins=bins, color="#8172b2")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per kept document")
        ax.set_title("document length")
        save(fig, "lengths.png")
    return charts


def write_report(out: Path, metrics: dict, lengths: list[int] | None = None) -> None:
    """report.md (with its PNG charts): the totals, drops by step and reason, languages, lengths, errors."""
    m = metrics
    charts = write_charts(out, metrics, lengths or [])
    lines = [
        f"# Corpus report: {out.name}",
        "",
        f"{m['files_read']} files read ({_mb(m['bytes_in'])}), {m['files_failed']} could not be read, "
        f"{m.get('files_skipped', 0)} files or archive members passed over (listed below).",
        "",
        "| | documents |",
        "|---|---:|",
        f"| read | {m['documents_in']:,} |",
        f"| kept | {m['documents_kept']:,} ({_mb(m['bytes_kept'])}) |",
        f"| dropped | {m['documents_dropped']:,} |",
        f"| train / val | {m['splits']['train']:,} / {m['splits']['val']:,}{_split_note(m)} |",
        "",
        *[f"> **Warning:** {w}  " for w in m.get("warnings", [])],
        "## Dropped, by step and reason",
        "",
        "| step | reason | documents |",
        "|---|---|---:|",
    ]
    for step, reasons in m["dropped"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {step} | {reason} | {n:,} |")
    lines += ["", "## Steps", "", "| step | seen | kept |", "|---|---:|---:|"]
    for step, r in m["steps"].items():
        lines.append(f"| {step} | {r['stats'].get('total', 0):,} | {r['stats'].get('forwarded', 0):,} |")
    lines += ["", "## Languages (kept)", "", "| language | documents | bytes |", "|---|---:|---:|"]
    for lang, v in m["languages"].items():
        lines.append(f"| {lang} | {v['documents']:,} | {_mb(v['bytes'])} |")
    if m.get("length_bytes"):
        lines += ["", "## Document length (bytes, kept)", "", "| " + " | ".join(m["length_bytes"]) + " |"]
        lines += [
            "|" + "---:|" * len(m["length_bytes"]),
            "| " + " | ".join(f"{v:,}" for v in m["length_bytes"].values()) + " |",
        ]
    lines += _balance(m)
    if charts:
        lines += ["", "## Charts", ""] + [f"![{name[:-4]}]({name})" for name in charts]
    if m["errors"]:
        lines += ["", f"## Files that could not be read ({m['files_failed']})", ""]
        lines += [f"- `{e['path']}`: {e['reason']}" for e in m["errors"]]
    if m.get("reader_warnings"):
        lines += ["", "## Reader warnings (the file was read; the library reading it noted this)", ""]
        lines += [f"- `{w['path']}`: {w['warning']}" for w in m["reader_warnings"]]
    lines += _passed_over(m)
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _split_note(m: dict) -> str:
    return (
        " (position split: val is the end of each document's text)"
        if m.get("val_split") == "position"
        else ""
    )


def _balance(m: dict) -> list[str]:
    """Where the kept text comes from: the largest sources and documents, what was capped, what redacted."""
    total = max(m["bytes_kept"], 1)
    sources = sorted(m["sources"].items(), key=lambda kv: (-kv[1].get("bytes", 0), kv[0]))
    lines = [
        "",
        f"## Sources, the most kept text first ({len(sources)} files; the manifest lists them all)",
        "",
    ]
    lines += ["| file | read | kept | kept text | share |", "|---|---:|---:|---:|---:|"]
    for path, v in sources[:20]:
        n = v.get("bytes", 0)
        lines.append(f"| `{path}` | {v['documents']:,} | {v['kept']:,} | {_mb(n)} | {n / total:.1%} |")
    if m.get("largest_documents"):
        lines += ["", "## Largest documents", "", "| source | id | text | share |", "|---|---|---:|---:|"]
        for d in m["largest_documents"]:
            lines.append(f"| `{d['source']}` | {d['id']} | {_mb(d['bytes'])} | {d['share']:.1%} |")
    if m.get("capped"):
        lines += ["", f"## Capped at {_mb(m['capped']['bytes'])} (--cap-doc-share)", ""]
        lines += [
            f"- `{d['source']}` ({d['id']}): {_mb(d['bytes'])} cut to its first {_mb(d['kept_bytes'])}"
            for d in m["capped"]["documents"]
        ]
    if "redacted" in m and "pii" in m["steps"]:
        lines += ["", "## Personal data redacted, by kind", ""]
        if m["redacted"]:
            lines += ["| kind | redactions |", "|---|---:|"]
            lines += [f"| {kind} | {n:,} |" for kind, n in m["redacted"].items()]
        else:
            lines.append("None found.")
    return lines


def _passed_over(m: dict) -> list[str]:
    """Files and archive members not read (unknown type, hidden, links out of the tree, unsafe names)."""
    skipped = m.get("skipped", [])
    if not skipped:
        return []
    lines = ["", f"## Passed over ({m['files_skipped']})", "", "| reason | files |", "|---|---:|"]
    lines += [f"| {reason} | {n:,} |" for reason, n in m["skipped_by_reason"].items()]
    lines += [""] + [f"- `{s['path']}`: {s['reason']}" for s in skipped]
    if m["files_skipped"] > len(skipped):
        lines.append(f"- … and {m['files_skipped'] - len(skipped):,} more in stats.json")
    return lines


def summary_table(metrics: dict, title: str) -> RenderableType:
    """The terminal summary: totals, every drop and skip reason, then the warnings in full, below."""
    m = metrics
    table = Table(title=title)
    table.add_column("")
    table.add_column("documents", justify="right")
    table.add_column("", justify="right")
    table.add_row(
        "read", f"{m['documents_in']:,}", _mb(m["bytes_in"]) + f" in {plural(m['files_read'], 'file')}"
    )
    for reason, n in m.get("skipped_by_reason", {}).items():
        table.add_row(f"[yellow]skipped[/] {reason}", "", f"{n:,} file" + ("s" if n != 1 else ""))
    table.add_row("[green]kept[/]", f"{m['documents_kept']:,}", _mb(m["bytes_kept"]))
    split = "position split" if m.get("val_split") == "position" else ""
    table.add_row("  train / val", f"{m['splits']['train']:,} / {m['splits']['val']:,}", split)
    for step, reasons in m["dropped"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(f"[yellow]dropped[/] {step}: {reason}", f"{n:,}", "")
    langs = ", ".join(f"{k} {v['documents']}" for k, v in list(m["languages"].items())[:6])
    table.add_row("languages", "", langs)
    if m.get("redacted"):
        table.add_row("redacted", "", ", ".join(f"{n:,} {kind}" for kind, n in m["redacted"].items()))
    if m.get("capped"):
        table.add_row(
            "[yellow]capped[/]", str(len(m["capped"]["documents"])), f"at {_mb(m['capped']['bytes'])}"
        )

    if m["files_failed"]:
        table.add_row("[red]unreadable files[/]", str(m["files_failed"]), "see stats.json")
    if m.get("reader_warnings"):
        table.add_row("reader warnings", "", f"{len(m['reader_warnings'])} listed in report.md")
    if m.get("seconds"):
        table.add_row("time", f"{m['seconds']:.1f} s", f"{m['bytes_in'] / 1e6 / m['seconds']:.1f} MB/s")
    below = [Text(f"warning: {w}", style="yellow") for w in m.get("warnings", [])]
    if not below and m.get("largest_documents"):  # a warning names it already
        top = m["largest_documents"][0]
        below.append(Text(f"largest document: {top['source']} ({top['share']:.1%} of the kept text)"))
    return Group(table, *below) if below else table
