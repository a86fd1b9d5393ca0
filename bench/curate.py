"""Curation benchmark: throughput per step and whole, 1 vs 2 workers, peak memory, near-dup quality,
language-ID accuracy, PII redactions on prose that holds none. Prints the figures and writes
bench/results/curate.json; asserts nothing.

    .venv/bin/python bench/curate.py /work/shared/corpora/ruslit [--html-pages 2000] [--skip-scale]
    .venv/bin/python bench/curate.py --only-near-dup [--near-dup-pairs 100]

Near dedup is measured on planted pairs at controlled word 5-gram Jaccard (words replaced): recall at
J ≥ 0.75 and false removals at J ≤ 0.6 (deterministic), and the pipeline's throughput with today's
banding relative to 14 bands x 8 rows, the setting before, in the same run.

Throughput is given twice: per wall second (what a user waits, shared machines included) and per
CPU second of the workers and the main process (what the code costs, whatever else runs beside it;
on an idle machine with W cores, wall MB/s approaches W times the per-CPU-second figure).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autarky.data.curate import CurateConfig, curate  # noqa: E402
from autarky.data.decode import decode  # noqa: E402
from autarky.data.dedup import NearDedup  # noqa: E402
from autarky.data.document import Document  # noqa: E402
from autarky.data.langid import detect  # noqa: E402
from autarky.data.normalize import Normalize  # noqa: E402
from autarky.data.pii import RULES, redact  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "curate.json"


# ------------------------------------------------------------------ memory of a process tree


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants (workers included) from /proc."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _tree_rss(root: int) -> int:
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        total, frontier = rss.get(root, 0), [root]
        while frontier:
            children = [p for p, parent in parents.items() if parent in frontier]
            total += sum(rss.get(c, 0) for c in children)
            frontier = children
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss(os.getpid()))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ throughput


def run_pipeline(sources: list[Path], config: CurateConfig, workers: int, label: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="autarky-bench-"))
    try:
        wall0 = time.perf_counter()
        with PeakMemory() as memory:
            corpus = curate(sources, work, config=config, workers=workers)
        wall = time.perf_counter() - wall0
        m = corpus.metrics
        cpu = m["cpu_seconds"]
        mb = m["bytes_in"] / 1e6
        steps = {}
        for name, r in m["steps"].items():
            seconds = r["seconds"]
            seen = r["stats"].get("total", 0)
            steps[name] = {
                "seconds": round(seconds, 3),
                "mb_per_s": round(mb / seconds, 1) if seconds > 1e-3 else None,
                "docs_per_s": round(seen / seconds, 1) if seconds > 1e-3 else None,
            }
        result = {
            "label": label,
            "workers": workers,
            "mb_in": round(mb, 1),
            "documents_in": m["documents_in"],
            "documents_kept": m["documents_kept"],
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "mb_per_wall_s": round(mb / wall, 2),
            "mb_per_cpu_s": round(mb / cpu, 2) if cpu > 0 else None,
            "docs_per_wall_s": round(m["documents_in"] / wall, 1),
            "peak_rss_mb": round(memory.peak / 1e6),
            "load_average": round(os.getloadavg()[0], 1),
            "steps": steps,
        }
        print(
            f"  {label:<34} workers={workers}  {mb:6.1f} MB  {wall:6.1f} s wall  {result['mb_per_wall_s']:5.2f} MB/s "
            f"(per CPU-s {result['mb_per_cpu_s']})  {result['docs_per_wall_s']:.0f} docs/s  peak {result['peak_rss_mb']} MB"
        )
        for name, s in steps.items():
            if s["mb_per_s"]:
                print(
                    f"      {name:<18} {s['seconds']:7.2f} s  {s['mb_per_s']:8.1f} MB/s  {s['docs_per_s']:9.1f} docs/s"
                )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def synthetic_html(directory: Path, pages: int, paragraphs: list[str], seed: int = 0) -> Path:
    """A dump of web pages: an article of real paragraphs wrapped in menus, banners, footers and ads."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    menu = "".join(f'<li><a href="/s{i}">Раздел {i}</a></li>' for i in range(12))
    for i in range(pages):
        body = "".join(
            f"<p>{p}</p>" for p in rng.sample(paragraphs, k=min(len(paragraphs), rng.randint(3, 12)))
        )
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Страница {i}</title>"
            f"<script>window.analytics={{id:{i}}};</script><style>body{{margin:0}}</style></head><body>"
            f"<header><div class='logo'>Сайт</div><nav><ul>{menu}</ul></nav></header>"
            f"<div class='cookie-consent'>Мы используем cookies. <button>OK</button></div>"
            f"<main><article><h1>Статья номер {i}</h1>{body}</article></main>"
            f"<aside class='sidebar'><ul>{menu}</ul></aside><div class='ads'>Купите слона!</div>"
            f"<footer>© 2024 Сайт. Все права защищены. Телефон +7 495 123-45-67</footer></body></html>"
        )
        (directory / f"page-{i:05d}.html").write_text(page)
    return directory


# ------------------------------------------------------------------ near-duplicate quality


OLD_BANDING = {"minhash_bands": 14, "minhash_rows": 8}  # the setting before issue 13, for comparison


def planted_pairs(pairs_per_level: int, seed: int, words: int = 300) -> tuple[list[str], np.ndarray]:
    """Pairs of documents at controlled word 5-gram Jaccard: a random text and a copy with a share of its
    words replaced (0% to 30%), each pair's exact Jaccard measured. Returns texts [a0, b0, a1, b1, …]."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(20000)]
    docs, truth = [], []
    for share in (0.0, 0.01, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06, 0.08, 0.12, 0.2, 0.3):
        for _ in range(pairs_per_level):
            first = [rng.choice(vocabulary) for _ in range(words)]
            other = list(first)
            for i in rng.sample(range(len(other)), int(len(other) * share)):
                other[i] = rng.choice(vocabulary)
            sa = {tuple(first[i : i + 5]) for i in range(len(first) - 4)}
            sb = {tuple(other[i : i + 5]) for i in range(len(other) - 4)}
            truth.append(len(sa & sb) / len(sa | sb))
            docs += [" ".join(first), " ".join(other)]
    return docs, np.array(truth)


def removed_pairs(docs: list[str], config: CurateConfig) -> tuple[np.ndarray, dict]:
    """Which second copies near dedup removes under `config`, and its step's counts."""
    hasher = config.hasher
    sigs = np.stack([hasher.signature(d) for d in docs])
    alive = np.ones(len(docs), dtype=bool)
    near = NearDedup(hasher, config.near_dup_threshold)
    near.select(
        hasher.band_keys(sigs),
        np.arange(len(docs)),
        lambda indices: {i: hasher.shingle_set(docs[i]) for i in indices.tolist()},
        alive,
        np.ones(len(docs), dtype=np.int32),
    )
    assert alive[0::2].all(), "a first copy was removed"
    return ~alive[1::2], dict(near.stats)


def near_dup_quality(pairs_per_level: int = 150, seed: int = 0) -> dict:
    """Planted pairs at measured Jaccard: how often is the later copy dropped, with today's banding and
    the one before it (both confirm candidates by exact Jaccard)? Deterministic: no timing here."""
    docs, truth = planted_pairs(pairs_per_level, seed)
    default = CurateConfig()
    settings = {
        f"{default.minhash_bands}x{default.minhash_rows}": default,
        "14x8": replace(default, **OLD_BANDING),
    }
    result: dict = {"pairs": len(truth), "threshold": default.near_dup_threshold}
    high, low = truth >= default.near_dup_threshold, truth <= 0.6
    for label, config in settings.items():
        removed, stats = removed_pairs(docs, config)
        by_level = {}
        for lo, hi in ((0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.9), (0.9, 1.01)):
            sel = (truth >= lo) & (truth < hi)
            if sel.any():
                by_level[f"{lo:.2f}-{min(hi, 1):.2f}"] = {
                    "pairs": int(sel.sum()),
                    "removed": round(float(removed[sel].mean()), 4),
                }
        result[label] = {
            "recall_at_jaccard_ge_threshold": round(float(removed[high].mean()), 4),
            "false_removals_at_jaccard_le_0.6": int(removed[low].sum()),
            "candidate_pairs": stats.get("candidate_pairs", 0),
            "compared_pairs": stats.get("compared_pairs", 0),
            "removed_by_jaccard": by_level,
        }
        r = result[label]
        print(
            f"  {label:>5}: recall at J ≥ {default.near_dup_threshold}: {r['recall_at_jaccard_ge_threshold']:.4f} "
            f"({int(high.sum())} pairs)   false removals at J ≤ 0.6: {r['false_removals_at_jaccard_le_0.6']} "
            f"({int(low.sum())} pairs)   candidates {r['candidate_pairs']}, compared {r['compared_pairs']}"
        )
        for level, v in by_level.items():
            print(f"      J {level}: {v['pairs']:4d} pairs, {v['removed']:.3f} removed")
    return result


def near_dup_throughput(pairs_per_level: int, rounds: int = 3) -> dict:
    """The whole pipeline (one worker) on planted pairs, today's banding beside 14 x 8 in the same run,
    alternating, best of `rounds` each: a ratio, not a speed (the machine may be shared)."""
    docs, _ = planted_pairs(pairs_per_level, seed=1)
    default = CurateConfig()
    settings = {"default": default, "14x8": replace(default, **OLD_BANDING)}
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="autarky-neardup-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i, text in enumerate(docs):
            (src / f"{i:06d}.txt").write_text(text)
        for _ in range(rounds):
            for label, config in settings.items():
                r = run_pipeline([src], config, 1, f"planted pairs, {label}")
                if label not in best or r["cpu_s"] < best[label]["cpu_s"]:
                    best[label] = r
    dedup = {
        label: sum(r["steps"][s]["seconds"] for s in ("minhash", "near_dedup")) for label, r in best.items()
    }
    whole = best["14x8"]["cpu_s"] / best["default"]["cpu_s"]
    steps = dedup["14x8"] / dedup["default"]
    print(
        f"  throughput of today's banding relative to 14 x 8 (best of {rounds}): whole pipeline per CPU "
        f"second {whole:.3f}, the two near-dedup steps (minhash, near_dedup) {steps:.3f}"
    )
    return {
        "runs": best,
        "default_relative_to_14x8_per_cpu_s": round(whole, 3),
        "near_dedup_steps_default_relative_to_14x8": round(steps, 3),
    }


# ------------------------------------------------------------------ language ID

LANGUAGE_SAMPLES = {
    "uk": [
        "Київ є столицею та найбільшим містом України, розташованим на річці Дніпро.",
        "Я давно хотів поїхати до Львова, щоб погуляти старими вуличками та випити кави.",
        "Учні нашої школи щороку беруть участь в олімпіадах з математики та фізики.",
        "Восени в лісі багато грибів, і ми з дідусем часто ходимо їх збирати.",
        "Ця книжка розповідає про життя звичайної родини у маленькому селі на Поділлі.",
        "Уряд ухвалив нове рішення щодо підтримки малого бізнесу в регіонах країни.",
        "Моя сестра навчається в університеті й мріє стати лікаркою.",
        "Сьогодні вранці йшов дощ, але після обіду визирнуло сонце.",
    ],
    "be": [
        "Мінск з'яўляецца сталіцай і найбуйнейшым горадам Рэспублікі Беларусь.",
        "Улетку мы заўсёды ездзім да бабулі ў вёску, дзе ёсць рэчка і вялікі сад.",
        "Беларуская мова належыць да ўсходнеславянскай групы славянскіх моў.",
        "Мой бацька працуе на заводзе, а маці выкладае ў школе гісторыю.",
        "Увечары мы сабраліся ўсёй сям'ёй за сталом і доўга размаўлялі.",
        "Гэтая кніга распавядае пра жыццё беларускіх сялян у дзевятнаццатым стагоддзі.",
        "Наша каманда перамагла ў спаборніцтвах і атрымала залаты медаль.",
        "Восенню ў лесе шмат грыбоў і ягад, і дзеці ходзяць іх збіраць.",
    ],
    "bg": [
        "София е столицата и най-големият град на България, разположен в подножието на Витоша.",
        "През лятото обичаме да ходим на море във Варна или в Бургас.",
        "Българският език принадлежи към южнославянската група на славянските езици.",
        "Баща ми работи като инженер, а майка ми е учителка в основно училище.",
        "Вчера вечерта гледахме хубав филм и после дълго говорихме за него.",
        "Правителството прие нови мерки за подкрепа на малкия и средния бизнес.",
        "Тази книга разказва историята на едно семейство от малко село в Родопите.",
        "Днес времето е слънчево, но утре се очаква да вали дъжд.",
    ],
    "en": [
        "London is the capital and largest city of England and the United Kingdom.",
        "Every summer we travel to the coast to visit my grandparents and swim in the sea.",
        "The committee approved the new budget after a long and heated discussion.",
        "My brother works as an engineer, and my mother teaches history at a local school.",
        "Yesterday evening we watched an old film and talked about it for hours.",
        "This book tells the story of a family living in a small village in the north.",
        "The weather is sunny today, but rain is expected to arrive tomorrow morning.",
        "Students at our school take part in mathematics and physics competitions every year.",
    ],
}


def language_accuracy(ruslit: Path | None, shakespeare: Path | None) -> dict:
    samples = {lang: list(texts) for lang, texts in LANGUAGE_SAMPLES.items()}
    rng = random.Random(0)
    if ruslit and ruslit.exists():
        files = sorted(ruslit.rglob("*.txt"))
        paragraphs = []
        for f in rng.sample(files, min(20, len(files))):
            paragraphs += [
                p for p in re.split(r"\n\s*\n", f.read_text(errors="replace")) if 80 < len(p) < 600
            ]
        samples["ru"] = rng.sample(paragraphs, min(40, len(paragraphs)))
    if shakespeare and shakespeare.exists():
        speeches = [p for p in shakespeare.read_text().split("\n\n") if 80 < len(p) < 600]
        samples["en"] += rng.sample(speeches, min(32, len(speeches)))
    result, right, total = {}, 0, 0
    for lang, texts in samples.items():
        predicted = [detect(t)[0] for t in texts]
        correct = sum(p == lang for p in predicted)
        right, total = right + correct, total + len(texts)
        confusions = {p: predicted.count(p) for p in set(predicted) if p != lang}
        result[lang] = {
            "paragraphs": len(texts),
            "accuracy": round(correct / len(texts), 3),
            "confused_with": confusions,
        }
        print(
            f"  {lang}: {correct}/{len(texts)} correct"
            + (f", confused with {confusions}" if confusions else "")
        )
    result["overall"] = round(right / total, 3)
    print(f"  overall: {result['overall']:.3f} on {total} paragraphs")
    return result


# ------------------------------------------------------------------ PII false positives


def pii_on_prose(ruslit: Path) -> dict:
    """Redactions per kind on Russian literature, normalised as the pipeline does: the books hold no
    personal data, so every redaction is a false positive. Candidates are the pattern matches on the
    lines with a digit or an @, refused ones those whose check (Luhn, check digits, parsing) failed."""
    redacted: Counter[str] = Counter()
    candidates: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    normalize, chars = Normalize(), 0
    for path in sorted(ruslit.rglob("*.txt")):
        text = normalize(Document("", decode(path.read_bytes())[0], "", "")).text
        chars += len(text)
        redacted.update(redact(text)[1])
        for line in (line for line in text.split("\n") if re.search(r"[0-9@]", line)):
            for kind, pattern, verdict in RULES:
                for match in pattern.finditer(line):
                    candidates[kind] += 1
                    refused[kind] += verdict(match) is None
    kinds = sorted({kind for kind, _, _ in RULES})
    result = {
        "characters": chars,
        "redacted": {k: redacted[k] for k in kinds},
        "candidates": {k: candidates[k] for k in kinds},
        "refused_by_check": {k: refused[k] for k in kinds},
    }
    print(
        f"  {chars / 1e6:.1f}M characters; per kind: redacted (false positives) / pattern matches / refused by check"
    )
    for k in kinds:
        print(f"      {k:<9} {redacted[k]:6d} / {candidates[k]:6d} / {refused[k]:6d}")
    return result


def near_dup_sections(throughput_pairs: int) -> dict:
    print("\n== near-duplicate detection on planted pairs (MinHash LSH over word 5-grams, exact Jaccard)")
    print("   targets: recall ≥ 0.98 at J ≥ 0.75; no false removal at J ≤ 0.6")
    results = {"near_dup": near_dup_quality()}
    if throughput_pairs:
        print("\n== near dedup's cost: the pipeline on planted pairs, today's banding beside 14 x 8")
        results["near_dup_throughput"] = near_dup_throughput(throughput_pairs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ruslit", type=Path, nargs="?", default=Path("/work/shared/corpora/ruslit"))
    parser.add_argument(
        "--shakespeare", type=Path, default=Path("/work/shared/corpora/tinyshakespeare/input.txt")
    )
    parser.add_argument("--html-pages", type=int, default=2000)
    parser.add_argument("--skip-scale", action="store_true", help="only near-dup quality and language ID")
    parser.add_argument(
        "--near-dup-pairs",
        type=int,
        default=100,
        help="pairs per level for near-dup throughput (13 levels; 0 skips it)",
    )
    parser.add_argument(
        "--only-near-dup",
        action="store_true",
        help="only the near-dup sections, their figures merged into the results file's others",
    )
    args = parser.parse_args()

    results: dict = {"cpu_count": os.cpu_count()}
    if args.only_near_dup:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else results
        results.update(near_dup_sections(args.near_dup_pairs))
        RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {RESULTS}")
        return
    if not args.skip_scale:
        if not args.ruslit.exists():
            raise SystemExit(f"{args.ruslit} does not exist; pass the path of a directory of text files")
        print(f"\n== whole pipeline on {args.ruslit} (no HTML; default config)")
        default = CurateConfig()
        results["ruslit"] = [run_pipeline([args.ruslit], default, w, "ruslit, default steps") for w in (1, 2)]
        one, two = results["ruslit"]
        results["ruslit_scaling"] = round(one["wall_s"] / two["wall_s"], 2)
        print(f"  1 -> 2 workers: {results['ruslit_scaling']:.2f}x the wall-clock speed (target >= 1.7)")
        print("\n== with the quality heuristics judging every document (--quality all)")
        results["ruslit_quality_all"] = run_pipeline(
            [args.ruslit], replace(default, quality_scope="all"), 2, "ruslit, quality on all"
        )
        print(f"\n== synthetic HTML dump ({args.html_pages} pages of ruslit paragraphs in boilerplate)")
        with tempfile.TemporaryDirectory(prefix="autarky-html-") as tmp:
            paragraphs = []
            for f in sorted(args.ruslit.rglob("*.txt"))[:40]:
                paragraphs += [
                    p.strip()
                    for p in re.split(r"\n\s*\n", f.read_text(errors="replace"))
                    if 200 < len(p) < 1500
                ]
            html = synthetic_html(Path(tmp) / "html", args.html_pages, paragraphs)
            results["html"] = [run_pipeline([html], default, w, "synthetic HTML") for w in (1, 2)]
    results.update(near_dup_sections(args.near_dup_pairs))
    print("\n== language ID (fastText lid.176 lite) on ru/uk/be/bg/en paragraphs")
    results["language_id"] = language_accuracy(args.ruslit, args.shakespeare)
    if args.ruslit.exists():
        print(f"\n== PII redactions on {args.ruslit} (no personal data in it: each one is a false positive)")
        results["pii_false_positives"] = pii_on_prose(args.ruslit)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
