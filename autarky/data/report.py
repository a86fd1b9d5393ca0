"""What a person reads about a corpus: `report.md` in the artifact and the summary table in the terminal."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from autarky.data.read import plural


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def bar_chart(title: str, rows: list[tuple[str, float, str]], color: str) -> str:
    """An SVG of horizontal bars: (label, value, the value as printed) per row, in the order given.

    Written by hand rather than drawn by matplotlib, whose import and rendering took over a second,
    most of curation's single-process time after the workers finish on a corpus of a few hundred files.
    """
    label_w, bar_w, row_h, top = 220, 360, 18, 28
    most = max((v for _, v, _ in rows), default=0) or 1
    parts = [f'<text x="8" y="18" font-weight="bold">{escape(title)}</text>']
    for i, (label, value, shown) in enumerate(rows):
        y = top + i * row_h
        width = round(bar_w * value / most, 1)
        parts += [
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(label[:34])}</text>',
            f'<rect x="{label_w}" y="{y + 2}" width="{width}" height="{row_h - 4}" fill="{color}"/>',
            f'<text x="{label_w + width + 4}" y="{y + 13}">{escape(shown)}</text>',
        ]
    height = top + len(rows) * row_h + 8
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{height}" '
        f'font-family="sans-serif" font-size="12">\n' + "\n".join(parts) + "\n</svg>\n"
    )


def length_rows(lengths: list[int]) -> list[tuple[str, float, str]]:
    """Kept documents per length, in bins from 4**k to 4**(k+1) bytes: (range, count, count printed)."""
    counts: dict[int, int] = {}
    for n in lengths:
        k = (max(n, 1).bit_length() - 1) // 2
        counts[k] = counts.get(k, 0) + 1
    return [
        (f"{_size(4**k)}–{_size(4 ** (k + 1))}", counts.get(k, 0), f"{counts.get(k, 0):,}")
        for k in range(min(counts, default=0), max(counts, default=-1) + 1)
    ]


def _size(n: int) -> str:
    """A power of 4 in binary units: 1 B, 4 B, …, 256 KiB, 1 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}"
        n //= 1024
    return f"{n} GiB"


def write_charts(out: Path, metrics: dict, lengths: list[int]) -> list[str]:
    """SVG charts beside report.md: languages, drops, lengths. Returns their file names."""
    charts = {}
    languages = list(metrics["languages"].items())[:12]
    if languages:
        rows = [(f"{k} ({v['documents']:,} documents)", v["bytes"], _mb(v["bytes"])) for k, v in languages]
        charts["languages.svg"] = bar_chart("kept text per language", rows, "#55a868")
    drops = [(f"{step}: {reason}", n) for step, rs in metrics["dropped"].items() for reason, n in rs.items()]
    if drops:
        rows = [(k, n, f"{n:,}") for k, n in sorted(drops, key=lambda kv: -kv[1])]
        charts["drops.svg"] = bar_chart("documents dropped, by step and reason", rows, "#c44e52")
    if lengths:
        charts["lengths.svg"] = bar_chart("kept documents by length", length_rows(lengths), "#8172b2")
    for name, svg in charts.items():
        (out / name).write_text(svg)
    return list(charts)


def write_report(out: Path, metrics: dict, lengths: list[int] | None = None) -> None:
    """report.md (with its SVG charts): the totals, drops by step and reason, languages, lengths, errors."""
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
