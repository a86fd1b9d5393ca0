"""Tasks in lm-evaluation-harness's format, read from local files: a YAML beside a JSONL of documents.

The subset of lm-eval's task YAML that a local task needs:

    task: ru_next_sentence                 # the name results are filed under
    output_type: multiple_choice           # or generate_until
    dataset_path: json                     # documents from a local JSON Lines file ...
    dataset_kwargs: {data_files: {test: ru_next_sentence.jsonl}}   # ... relative to the YAML
    test_split: test                       # (or validation_split)
    doc_to_text: "{{context}}"             # a field name, a Jinja template, or a literal
    doc_to_choice: choices                 # multiple_choice: a field, a template giving a list, or a list
    doc_to_target: label                   # the gold choice's index (or text); the answer for generation
    target_delimiter: " "                  # between the context and each choice (lm-eval's default)
    generation_kwargs: {until: ["\\n"], max_gen_toks: 32}
    metric_list: [{metric: acc}, {metric: acc_norm}]   # acc, acc_norm | exact_match
    metadata: {language: ru}               # optional: results are also grouped by it
    description: "..."                     # optional: put before every document's text, as lm-eval does

A field name is looked up first, then `{{ }}`/`{% %}` renders as Jinja in a sandbox (a task file is
input, not code: lm-eval's `!function` is refused), anything else is taken literally, as lm-eval does.
What autarky would score otherwise than lm-eval (few-shot, repeats, result filters, custom code) is
refused by name rather than ignored.
Every document is checked when the task is read, so a missing field or a label out of range is one
sentence naming the file, the line and the field, before any model runs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autarky.console import UserError

OUTPUT_TYPES = {"multiple_choice": ("acc", "acc_norm"), "generate_until": ("exact_match",)}
SUPPORTED_KEYS = {
    "task", "output_type", "dataset_path", "dataset_kwargs", "test_split", "validation_split", "description",
    "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "generation_kwargs", "metric_list",
    "metadata",
}  # fmt: skip
NEUTRAL_KEYS = {  # lm-eval settings that change nothing in a zero-shot run from a local file
    "tag", "group", "dataset_name", "training_split", "fewshot_split", "fewshot_delimiter", "fewshot_config",
    "should_decontaminate", "doc_to_decontamination_query", "num_fewshot", "repeats",
}  # fmt: skip


@dataclass
class Item:
    """One document as the model sees it: the context, the choices (if any) and the gold answer."""

    context: str
    gold: int | str
    choices: list[str] = field(default_factory=list)


@dataclass
class Task:
    name: str
    output_type: str
    items: list[Item]
    metrics: list[str]
    target_delimiter: str = " "
    until: list[str] = field(default_factory=list)
    max_gen_toks: int = 64
    language: str | None = None
    files: list[Path] = field(default_factory=list)  # the YAML and its data, for the manifest

    def limited(self, limit: int) -> Task:
        return dataclasses.replace(self, items=self.items[:limit]) if limit else self


def load_tasks(path: Path) -> list[Task]:
    """Every task of a YAML file, or of each `*.yaml` / `*.yml` in a directory (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise UserError(f"{path} holds no task YAML (*.yaml) files")
        return [load_task(f) for f in files]
    if not path.is_file():
        raise UserError(f"{path} is neither a task YAML file nor a directory of them")
    return [load_task(path)]


def load_task(path: Path) -> Task:
    """Read one task YAML and its documents, checking every document against the task."""
    spec = read_spec(path)
    output_type = spec.get("output_type", "multiple_choice")
    data = data_file(path, spec)
    until, max_gen_toks = generation_settings(path, spec)
    metadata = spec.get("metadata") if isinstance(spec.get("metadata"), dict) else {}
    task = Task(
        name=spec["task"],
        output_type=output_type,
        items=[],
        metrics=metric_names(path, spec, output_type),
        target_delimiter=str(spec.get("target_delimiter", " ")),
        until=until,
        max_gen_toks=max_gen_toks,
        language=metadata.get("language"),
        files=[path, data],
    )
    for line_no, doc in read_documents(data):
        where = f"{data}, line {line_no} (task {task.name})"
        task.items.append(make_item(spec, doc, output_type, where))
    if not task.items:
        raise UserError(f"{data} holds no documents for task {task.name}")
    return task


def read_spec(path: Path) -> dict:
    """The YAML, refused where autarky would score it otherwise than lm-eval does (few-shot, repeats,
    result filters, code), or where a setting it needs is missing."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a task YAML autarky reads ({first}; `!function` is not supported)"
        ) from e
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str) or not spec["task"]:
        raise UserError(f"{path} is not an lm-eval task: it needs a `task:` name")
    if not re.fullmatch(r"\w[\w.@+-]*", spec["task"]):
        raise UserError(f"{path}: the task name {spec['task']!r} may hold letters, digits and _ . @ + - only")
    unknown = sorted(set(spec) - SUPPORTED_KEYS - NEUTRAL_KEYS)
    if unknown:
        raise UserError(f"{path}: {', '.join(unknown)} is not among the task settings autarky supports")
    if spec.get("num_fewshot") not in (None, 0) or spec.get("repeats") not in (None, 1):
        raise UserError(f"{path}: autarky runs tasks zero-shot and once; num_fewshot must be 0 and repeats 1")
    output_type = spec.get("output_type", "multiple_choice")
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"{path}: output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
    needed = ("doc_to_text", "doc_to_target") + (
        ("doc_to_choice",) if output_type == "multiple_choice" else ()
    )
    for key in needed:
        if key not in spec:
            raise UserError(f"{path}: a {output_type} task needs `{key}`")
    return spec


def generation_settings(path: Path, spec: dict) -> tuple[list[str], int]:
    """`until` (lm-eval's default: a blank line) and `max_gen_toks`, checked."""
    generation = spec.get("generation_kwargs") or {}
    if not isinstance(generation, dict):
        raise UserError(f"{path}: generation_kwargs must be a mapping")
    until = generation.get("until", ["\n\n"])
    until = [until] if isinstance(until, str) else until
    max_gen_toks = generation.get("max_gen_toks", 64)
    if not (isinstance(until, list) and all(isinstance(u, str) for u in until)):
        raise UserError(f"{path}: generation_kwargs.until must be a string or a list of strings")
    if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1:
        raise UserError(f"{path}: generation_kwargs.max_gen_toks must be a whole number of at least 1")
    return until, max_gen_toks


def data_file(path: Path, spec: dict) -> Path:
    """The JSONL the task reads: `dataset_kwargs.data_files[split]` (or a .jsonl dataset_path), beside the YAML."""
    split = spec.get("test_split") or spec.get("validation_split") or "test"
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        name = files.get(split)
    elif isinstance(files, str | list):
        name = files if isinstance(files, str) else (files[0] if files else None)
    else:
        dataset = str(spec.get("dataset_path", ""))
        name = dataset if dataset.endswith((".jsonl", ".json")) else None
    if not isinstance(name, str) or not name:
        raise UserError(
            f"{path}: the task names no local data file; give `dataset_path: json` and "
            f"`dataset_kwargs: {{data_files: {{{split}: FILE.jsonl}}}}` (a dataset from a hub is never fetched)"
        )
    data = path.parent / name
    if not data.is_file():
        raise UserError(f"{path}: its data file {data} does not exist")
    return data


def read_documents(data: Path) -> list[tuple[int, dict]]:
    documents = []
    with open(data, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{data}, line {line_no}: not a JSON object ({e.msg})") from e
            if not isinstance(doc, dict):
                raise UserError(
                    f"{data}, line {line_no}: a document is a JSON object, not {type(doc).__name__}"
                )
            documents.append((line_no, doc))
    return documents


def metric_names(path: Path, spec: dict, output_type: str) -> list[str]:
    allowed = OUTPUT_TYPES[output_type]
    entries = spec.get("metric_list") or [{"metric": m} for m in allowed]
    names = [e.get("metric") if isinstance(e, dict) else e for e in entries]
    wrong = [str(n) for n in names if n not in allowed]
    if wrong:
        raise UserError(
            f"{path}: metric {', '.join(wrong)} is not one a {output_type} task reports ({', '.join(allowed)})"
        )
    return list(dict.fromkeys(names))


def make_item(spec: dict, doc: dict, output_type: str, where: str) -> Item:
    context = str(render(spec["doc_to_text"], doc, "doc_to_text", where))
    if spec.get("description"):  # lm-eval puts it before the text of every document
        context = str(render(spec["description"], doc, "description", where)) + context
    target = render(spec["doc_to_target"], doc, "doc_to_target", where)
    if output_type == "generate_until":
        return Item(context=context, gold=str(target))
    choices = render(spec["doc_to_choice"], doc, "doc_to_choice", where)
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (ValueError, SyntaxError):
            choices = None
    if not isinstance(choices, list | tuple) or len(choices) < 2:
        raise UserError(f"{where}: doc_to_choice must give a list of at least two choices")
    choices = [str(c) for c in choices]
    return Item(context=context, gold=gold_index(target, choices, where), choices=choices)


def gold_index(target: Any, choices: list[str], where: str) -> int:
    """lm-eval's target: the gold choice's index, its index as text, or the choice's own text."""
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int | str):
        raise UserError(f"{where}: doc_to_target must give a choice's index or its text, not {target!r}")
    if isinstance(target, str):
        if target not in choices:
            raise UserError(f"{where}: the target {target!r} is not among the choices")
        return choices.index(target)
    if not 0 <= target < len(choices):
        raise UserError(
            f"{where}: the label {target} is out of range for {len(choices)} choices (0 to {len(choices) - 1})"
        )
    return target


def render(template: Any, doc: dict, key: str, where: str) -> Any:
    """A field's value, a rendered Jinja template, a list of either, or the literal itself."""
    if isinstance(template, list):
        return [render(t, doc, key, where) for t in template]
    if not isinstance(template, str):
        return template
    if template in doc:
        return doc[template]
    if "{{" not in template and "{%" not in template:
        return template
    import jinja2

    try:
        return _jinja().from_string(template).render(**doc)
    except jinja2.UndefinedError as e:
        raise UserError(f"{where}: {key} needs a field the document lacks ({e.message})") from e
    except jinja2.TemplateError as e:
        raise UserError(f"{where}: {key} is not a template autarky can render ({e})") from e


@functools.cache
def _jinja():
    """A sandboxed Jinja environment in which an undefined field is an error, never an empty string."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
