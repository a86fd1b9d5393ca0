"""The built-in task suite: multiple-choice tasks made from a corpus's held-out text, with no network.

For each language asked (Russian and English by default) it writes two lm-eval tasks from the
corpus's val split, which training never reads:
- `<lang>_next_sentence`: a sentence, then its true next sentence among sentences drawn from the
  same language's held-out text: other documents, or at least three sentences away in its own;
- `<lang>_cloze`: the start of a sentence, then the rest of it with the true word among words drawn
  from sentences as far away (cased like the true one), so the choices differ in that word alone.

The result is a `tasks` artifact whose input is the corpus and whose config is every setting used
here, so a task's lineage runs from its items back to the source files their sentences came from.
The directory is lm-eval's own format. lm-eval reads it too, from inside it (it finds data files
from its working directory, and the YAML names them relatively so the artifact can move):
`cd work/tasks/<name> && lm-eval --include_path . --tasks ru_cloze ...`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

from autarky.artifact import Artifact, Builder, default_name, write_atomic
from autarky.console import UserError, console
from autarky.evaluate.config import SuiteConfig

BUILDER = "autarky.evaluate.suite/1"  # bumped whenever the way items are made changes
MAX_BYTES = 4_000_000  # of val text read: plenty for a few hundred items per task, in bounded memory
# A sentence ends at . ! ? or … (closing quotes and brackets stay with it) before a capital or a digit.
SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"»”)]))\s+(?=[\"«“(—–-]?\s*[A-ZА-ЯЁ0-9])")
WORD = re.compile(r"(?<=\s)[^\W\d_]{4,}(?![\w-])")  # a whole word of letters, after a space
MIN_CHARS, MAX_CHARS, MIN_WORDS = 25, 300, 5


class TooLittleText(UserError):
    """The corpus's held-out text gives no item in any language asked."""


def sentences(text: str) -> list[str | None]:
    """The text's sentences in order, on one line each; None stands for one of an untestable size
    (under 5 words, or outside 25–300 characters), so that neighbours stay neighbours."""
    found: list[str | None] = []
    for paragraph in re.split(r"\n\s*\n", text):  # a heading without a full stop ends at its blank line
        for s in SENTENCE_END.split(" ".join(paragraph.split())):
            s = s.strip()
            if s:
                found.append(s if MIN_CHARS <= len(s) <= MAX_CHARS and len(s.split()) >= MIN_WORDS else None)
    return found


def next_sentence_items(documents: list[list[str]], config: SuiteConfig, rng: random.Random) -> list[dict]:
    pool = [(d, i, s) for d, doc in enumerate(documents) for i, s in enumerate(doc) if s]
    pairs = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1) if doc[i] and doc[i + 1]]
    rng.shuffle(pairs)
    items = []
    for d, i in pairs[: config.suite_items]:
        true = documents[d][i + 1]
        if (drawn := _draw(pool, (d, i), true, config.suite_choices - 1, rng)) is not None:
            items.append(_shuffled({"context": documents[d][i]}, [true, *drawn], rng))
    return items


def cloze_items(documents: list[list[str]], config: SuiteConfig, rng: random.Random) -> list[dict]:
    pool = [
        (d, i, w.lower())
        for d, doc in enumerate(documents)
        for i, t in enumerate(doc)
        if t
        for w in WORD.findall(t)
    ]
    spots = []
    for d, doc in enumerate(documents):
        for i, sentence in enumerate(doc):  # one word per sentence, with at least three words before it
            if not sentence:
                continue
            words = [m for m in WORD.finditer(sentence) if len(sentence[: m.start()].split()) >= 3]
            if words:
                spots.append((d, i, rng.choice(words)))
    rng.shuffle(spots)
    items = []
    for d, i, m in spots[: config.suite_items]:
        sentence = documents[d][i]
        word, rest = m.group(), sentence[m.end() :]
        if (drawn := _draw(pool, (d, i), word.lower(), config.suite_choices - 1, rng)) is None:
            continue
        cased = [w.capitalize() if word[0].isupper() else w for w in drawn]
        context = {"context": sentence[: m.start()].rstrip()}
        items.append(_shuffled(context, [word + rest, *(w + rest for w in cased)], rng))
    return items


def _draw(
    pool: list[tuple[int, int, str]], at: tuple[int, int], true: str, k: int, rng: random.Random
) -> list[str] | None:
    """`k` distinct texts, none equal to `true`, from other documents or at least three sentences
    away from sentence `at` in its own; None if the pool runs dry."""
    drawn: list[str] = []
    for _ in range(50 * k):
        d, i, text = rng.choice(pool)
        near = d == at[0] and abs(i - at[1]) <= 2
        if not near and text.lower() != true.lower() and text not in drawn:
            drawn.append(text)
            if len(drawn) == k:
                return drawn
    return None


def _shuffled(item: dict, choices: list[str], rng: random.Random) -> dict:
    """The item with its choices in a random order and `label` the true one's place (it came first)."""
    order = list(range(len(choices)))
    rng.shuffle(order)
    return {**item, "choices": [choices[i] for i in order], "label": order.index(0)}


def task_yaml(name: str, language: str) -> str:
    spec = {
        "task": name,
        "output_type": "multiple_choice",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")
        ],
        "metadata": {"language": language, "made_by": BUILDER},
    }
    import yaml

    return yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)


def documents_by_language(corpus: Artifact, languages: list[str]) -> dict[str, list[list[str]]]:
    """The sentences of each val document, per language asked, up to `MAX_BYTES` of text."""
    from autarky.data.corpus import iter_documents

    found: dict[str, list[list[str]]] = {lang: [] for lang in languages}
    seen = 0
    for doc in iter_documents(corpus, "val", ("text", "lang")):
        if doc["lang"] in found and any(split := sentences(doc["text"])):
            found[doc["lang"]].append(split)
        seen += len(doc["text"].encode())
        if seen >= MAX_BYTES:
            break
    return found


def build_suite(
    corpus: Artifact, workdir: Path, config: SuiteConfig | None = None, force: bool = False
) -> Artifact:
    """The built-in tasks from `corpus`'s val split, as a `tasks` artifact (reused when already made)."""
    config = config or SuiteConfig()
    config.validate()
    if corpus.kind != "corpus":
        raise UserError(f"{corpus.path} is a {corpus.kind}; the built-in tasks are made from a corpus")
    recipe = {"builder": BUILDER, "split": "val", "max_bytes": MAX_BYTES, **asdict(config)}
    name = default_name(f"suite-{corpus.name}", "tasks", recipe, [corpus])
    builder = Builder(workdir, "tasks", name, recipe, [corpus])
    if (done := builder.existing(force)) is not None:
        return done
    made = {}
    with builder:
        for lang, documents in documents_by_language(corpus, config.suite_languages).items():
            for kind, make in (("next_sentence", next_sentence_items), ("cloze", cloze_items)):
                items = make(documents, config, random.Random(f"{config.suite_seed}/{lang}/{kind}"))
                if not items:
                    continue
                task = f"{lang}_{kind}"
                write_atomic(builder.dir / f"{task}.yaml", task_yaml(task, lang))
                lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
                write_atomic(builder.dir / f"{task}.jsonl", lines)
                made[task] = {"language": lang, "items": len(items), "choices": config.suite_choices}
        if not made:
            raise TooLittleText(
                f"corpus {corpus.name} has too little held-out text in {', '.join(config.suite_languages)} "
                "to make the built-in tasks (they need several sentences of 5 words or more in the val split)"
            )
        builder.metrics = {"tasks": made}
        console.print(f"made built-in tasks {', '.join(made)} from corpus {corpus.name}")
        return builder.finish()
