"""autarky eval: lm-eval task files read and checked, exact log-likelihoods and bits per byte, the
built-in suite made from a corpus, and the eval artifact's lineage."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from autarky import artifact
from autarky.console import UserError
from autarky.data.config import CurateConfig
from autarky.evaluate.config import EvalConfig, SuiteConfig
from autarky.evaluate.tasks import load_tasks
from tests.conftest import write_sources

MC_YAML = """\
task: capitals
output_type: multiple_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: capitals.jsonl
test_split: test
doc_to_text: "Q: What is the capital of {{country}}?\\nA:"
doc_to_choice: "{{options}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  language: en
"""
MC_DOCS = [
    {"country": "France", "options": ["Paris", "Rome", "Oslo"], "answer": 0},
    {"country": "Italy", "options": ["Paris", "Rome", "Oslo"], "answer": "Rome"},
]
GEN_YAML = """\
task: echo_word
output_type: generate_until
dataset_path: json
dataset_kwargs: {data_files: {test: echo.jsonl}}
doc_to_text: "Repeat: {{word}}\\n"
doc_to_target: word
generation_kwargs: {until: ["\\n"], max_gen_toks: 8}
metric_list: [{metric: exact_match}]
"""


def write_tasks(root: Path, docs: list[dict] = MC_DOCS, yaml_text: str = MC_YAML) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "capitals.yaml").write_text(yaml_text, encoding="utf-8")
    (root / "capitals.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return root


def test_a_task_file_in_lm_eval_format_reads_with_fields_templates_and_text_targets(tmp_path):
    (task,) = load_tasks(write_tasks(tmp_path / "t"))
    assert task.name == "capitals" and task.language == "en" and task.metrics == ["acc", "acc_norm"]
    assert task.items[0].context == "Q: What is the capital of France?\nA:"
    assert task.items[0].choices == ["Paris", "Rome", "Oslo"]
    assert [item.gold for item in task.items] == [0, 1]  # an index, and a choice's own text
    assert task.target_delimiter == " "
    with_description = MC_YAML.replace(
        "test_split: test", 'test_split: test\ndescription: "Geography.\\n\\n"'
    )
    (task,) = load_tasks(write_tasks(tmp_path / "d", yaml_text=with_description))
    assert task.items[1].context == "Geography.\n\nQ: What is the capital of Italy?\nA:"


@pytest.mark.parametrize(
    "docs, yaml_edit, says",
    [
        ([{"options": ["a", "b"], "answer": 0}], None, "line 1 (task capitals): doc_to_text needs a field"),
        (
            [MC_DOCS[0], {**MC_DOCS[0], "answer": 3}],
            None,
            "line 2 (task capitals): the label 3 is out of range",
        ),
        ([{**MC_DOCS[0], "answer": "Berlin"}], None, "the target 'Berlin' is not among the choices"),
        ([{**MC_DOCS[0], "options": ["Paris"]}], None, "at least two choices"),
        (
            MC_DOCS,
            ("doc_to_text:", "process_docs: !function utils.process\ndoc_to_text:"),
            "`!function` is not",
        ),
        (MC_DOCS, ("output_type: multiple_choice", "output_type: loglikelihood_rolling"), "is not one of"),
        (MC_DOCS, ("  - metric: acc_norm", "  - metric: bleu"), "metric bleu is not one"),
        (MC_DOCS, ("test: capitals.jsonl", "test: elsewhere.jsonl"), "elsewhere.jsonl does not exist"),
        (MC_DOCS, ("doc_to_target: answer\n", ""), "needs `doc_to_target`"),
        (MC_DOCS, ("task: capitals", "task: ../capitals"), "may hold letters, digits"),
        (MC_DOCS, ("test_split: test", "test_split: test\nnum_fewshot: 5"), "num_fewshot must be 0"),
        (MC_DOCS, ("test_split: test", "test_split: test\nfilter_list: []"), "filter_list is not among"),
    ],
)
def test_a_bad_task_file_is_one_clear_sentence(tmp_path, docs, yaml_edit, says):
    text = MC_YAML.replace(*yaml_edit) if yaml_edit else MC_YAML
    with pytest.raises(UserError, match=None) as error:
        load_tasks(write_tasks(tmp_path / "t", docs, text))
    assert says in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def work(pipeline, trained, tmp_path_factory):
    """A copy of the session's workspace, so the artifacts made here do not change what others see,
    with a corpus of which half is held out, to evaluate on."""
    from autarky.data.curate import curate

    workdir = tmp_path_factory.mktemp("eval") / "work"
    shutil.copytree(pipeline.workdir, workdir, ignore=shutil.ignore_patterns(".parts-*"))
    heldout = curate(
        [write_sources(workdir.parent / "heldout", n_docs=40)], workdir, config=CurateConfig(val_fraction=0.5)
    )
    return SimpleNamespace(
        workdir=workdir,
        root=workdir.parent,
        corpus=heldout,
        model=artifact.load(workdir / "model" / trained.name),
    )


@pytest.fixture(scope="module")
def net_and_tok(work):
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    return load_pretrained(work.model.path), Tokenizer.load(work.model.path)


def test_loglikelihood_is_exact_batched_or_not_and_splits_pairs_as_lm_eval_does(net_and_tok):
    from autarky.evaluate.score import encode_pair, loglikelihood

    net, tok = net_and_tok
    context, continuation = "The list data type has some more methods. ", "Here are all"
    ctx, cont = encode_pair(tok, context, continuation)
    assert ctx[0] == tok.bos_id and ctx[1:] == tok.encode(context.rstrip())  # the space moves on
    assert ctx[1:] + cont == tok.encode(context + continuation)
    requests = [
        encode_pair(tok, c, " " + x) for c in ("Мороз и солнце;", "def f(x):") for x in ("день", "return x")
    ]
    batched = loglikelihood(net, requests, batch_size=3)
    for (c, x), (ll, greedy) in zip(requests, batched, strict=True):
        with torch.no_grad():  # each request alone, unpadded, the plain way
            logprobs = F.log_softmax(net(torch.tensor([c + x])[:, :-1])[0].float(), dim=-1)[0]
        expected = sum(float(logprobs[len(c) - 1 + j, t]) for j, t in enumerate(x))
        assert ll == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(logprobs[len(c) - 1 + j].argmax()) == t for j, t in enumerate(x))
    one_by_one = loglikelihood(net, requests, batch_size=1)
    assert [ll for ll, _ in one_by_one] == pytest.approx([ll for ll, _ in batched], abs=1e-5)
    assert [g for _, g in one_by_one] == [g for _, g in batched]


def test_task_scores_equal_lm_eval_harness_own_on_the_same_model(work, tmp_path, monkeypatch):
    """lm-eval's `hf` backend (transformers, with <|bos|> first as our documents have it) gives the
    same per-choice log-likelihoods for the same task file as `autarky eval`, to float precision."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval[api] is in the dev extra")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from autarky.evaluate.score import score_multiple_choice
    from autarky.model import load_pretrained
    from autarky.tokenizer import Tokenizer

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    tasks = write_tasks(tmp_path / "tasks")  # lm-eval reads data files from the working directory
    absolute = f"test: {tasks / 'capitals.jsonl'}\n  cache_dir: {tmp_path / 'cache'}"
    (tasks / "capitals.yaml").write_text(MC_YAML.replace("test: capitals.jsonl", absolute), encoding="utf-8")
    lm = HFLM(
        pretrained=str(work.model.path), add_bos_token=True, batch_size=4, device="cpu", dtype="float32"
    )
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["capitals"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True
    )
    theirs = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in out["samples"]["capitals"]}
    (task,) = load_tasks(tasks)
    metrics, records = score_multiple_choice(
        load_pretrained(work.model.path), Tokenizer.load(work.model.path), task
    )
    for record in records:
        assert record["loglikelihoods"] == pytest.approx(theirs[record["doc"]], abs=1e-4)
    assert metrics["acc"] == pytest.approx(out["results"]["capitals"]["acc,none"])
    assert metrics["acc_norm"] == pytest.approx(out["results"]["capitals"]["acc_norm,none"])


def test_bits_per_byte_by_group_scores_every_token_once(net_and_tok):
    from autarky.evaluate.bpb import token_byte_lengths
    from autarky.evaluate.score import score_stream

    net, tok = net_and_tok
    stream = torch.tensor([tok.bos_id, *tok.encode("Мороз и солнце; день чудесный! " * 6)])
    tally = score_stream(net, stream, token_byte_lengths(tok), seq_len=16, batch_size=4)
    nats = 0.0
    for start in range(0, len(stream) - 1, 16):  # the same windows, every target once, the tail too
        window = stream[start : start + 17][None]
        with torch.no_grad():
            logits = net(window[:, :-1])[0][0].float()
        nats += float(F.cross_entropy(logits, window[0, 1:], reduction="sum"))
    assert tally.tokens == len(stream) - 1
    assert tally.bytes == len(("Мороз и солнце; день чудесный! " * 6).encode())
    assert tally.bits == pytest.approx(nats / math.log(2), rel=1e-5)


def test_the_built_in_suite_is_made_from_held_out_sentences_of_the_corpus(work):
    from autarky.data.corpus import iter_texts
    from autarky.evaluate.suite import build_suite

    suite = build_suite(work.corpus, work.workdir, SuiteConfig(suite_items=8))
    assert suite.kind == "tasks" and [i["id"] for i in suite.manifest["inputs"]] == [work.corpus.id]
    val = " ".join(" ".join(t.split()) for t in iter_texts(work.corpus, "val"))
    tasks = {t.name: t for t in load_tasks(suite.path)}
    assert {"en_next_sentence", "en_cloze"} <= set(tasks)
    for item in tasks["en_next_sentence"].items:
        assert f"{item.context} {item.choices[item.gold]}" in val  # the true next sentence
        assert len(set(item.choices)) == 4
    for item in tasks["en_cloze"].items:
        assert f"{item.context} {item.choices[item.gold]}" in val
        tails = {c.split(maxsplit=1)[1] if " " in c else "" for c in item.choices}
        assert len(tails) == 1  # the choices differ in the masked word alone
    assert build_suite(work.corpus, work.workdir, SuiteConfig(suite_items=8)).id == suite.id


@pytest.fixture(scope="module")
def evaluated(work):
    from autarky.evaluate.stage import evaluate

    tasks = write_tasks(work.root / "my-tasks")
    (tasks / "echo.yaml").write_text(GEN_YAML, encoding="utf-8")
    (tasks / "echo.jsonl").write_text('{"word": "list"}\n{"word": "снег"}\n', encoding="utf-8")
    config = EvalConfig(bpb_tokens=1500, seq_len=64, prompts=["The list", "Мороз"], sample_tokens=8)
    result = evaluate(work.model, work.workdir, [work.corpus], [tasks], config, SuiteConfig(suite_items=8))
    return SimpleNamespace(result=result, tasks=tasks, config=config)


def test_an_eval_artifact_names_the_model_corpus_and_tasks_it_was_scored_on(work, evaluated):
    from autarky.data.corpus import iter_documents

    e = evaluated.result
    assert e.kind == "eval"
    kinds = [(i["kind"], i["id"]) for i in e.manifest["inputs"]]
    assert kinds[:2] == [("model", work.model.id), ("corpus", work.corpus.id)] and kinds[2][0] == "tasks"
    sources = {Path(s["path"]).name for s in e.manifest["sources"]}
    assert sources == {"capitals.yaml", "capitals.jsonl", "echo.yaml", "echo.jsonl"}
    results = json.loads((e.path / "results.json").read_text())
    assert results["schema"] == "autarky.eval/1" and results["model"]["id"] == work.model.id
    bpb = results["bpb"][work.corpus.name]
    assert 0 < bpb["overall"]["bpb"] < 16 and 1400 < bpb["overall"]["tokens"] <= 1500
    for groups in (bpb["by_language"], bpb["by_source"]):  # groups add up exactly to the whole
        bits = sum(g["bpb"] * g["bytes"] for g in groups.values())
        assert bits / sum(g["bytes"] for g in groups.values()) == pytest.approx(bpb["overall"]["bpb"])
    languages = {d["lang"] for d in iter_documents(work.corpus, "val", ("lang",))}
    assert "en" in bpb["by_language"] and set(bpb["by_language"]) <= languages
    capitals = results["tasks"]["capitals"]
    assert capitals["n"] == 2 and set(capitals["metrics"]) >= {"acc", "acc_norm", "acc_stderr"}
    assert results["tasks"]["echo_word"]["metrics"]["exact_match"] in (0.0, 0.5, 1.0)
    assert results["tasks"]["en_cloze"]["from"].startswith("tasks/suite-")
    assert [s["prompt"] for s in results["samples"]] == ["The list", "Мороз"]
    records = (e.path / "samples" / "capitals.jsonl").read_text().splitlines()
    assert len(records) == 2 and len(json.loads(records[0])["loglikelihoods"]) == 3
    assert e.metrics["tasks"]["capitals"] == capitals["metrics"]
    assert (e.path / "eval.png").stat().st_size > 1000


def test_the_eval_verifies_reruns_to_the_same_artifact_and_tracks_its_task_files(work, evaluated):
    from autarky.evaluate.stage import evaluate

    checked, problems = artifact.verify(evaluated.result.path)
    assert not problems and {a.kind for a in checked} >= {"eval", "model", "tasks", "corpus", "tokenizer"}
    again = evaluate(
        work.model,
        work.workdir,
        [work.corpus],
        [evaluated.tasks],
        evaluated.config,
        SuiteConfig(suite_items=8),
    )
    assert again.id == evaluated.result.id and again.manifest["seal"] == evaluated.result.manifest["seal"]
    jsonl = evaluated.tasks / "capitals.jsonl"
    jsonl.write_text(jsonl.read_text().replace("Oslo", "Bern"))  # a changed task file is a new recipe
    with pytest.raises(UserError, match="already holds an? eval made from other inputs"):
        evaluate(
            work.model,
            work.workdir,
            [work.corpus],
            [evaluated.tasks],
            evaluated.config,
            SuiteConfig(suite_items=8),
            name=evaluated.result.name,
        )
    jsonl.write_text(jsonl.read_text().replace("Bern", "Oslo"))


def test_compare_lists_every_evaluated_model(work, evaluated):
    from autarky.evaluate.stage import compare, plot_compare

    measures, rows = compare(work.workdir)
    assert [r["eval"] for r in rows] == [evaluated.result.name] and rows[0]["model"] == work.model.name
    assert measures[0] == f"bpb:{work.corpus.name}" and "capitals" in measures
    plot_compare(measures, rows, work.root / "compare.png")
    assert (work.root / "compare.png").stat().st_size > 1000


def test_eval_refuses_what_is_not_a_model_or_a_corpus(work):
    from autarky.evaluate.stage import evaluate

    with pytest.raises(UserError, match="is a corpus; autarky eval scores a model"):
        evaluate(work.corpus, work.workdir)
    with pytest.raises(UserError, match="is a model; bits per byte is measured on a corpus"):
        evaluate(work.model, work.workdir, [work.model])


def test_a_corpus_too_small_for_the_suite_is_said_so_and_passed_over(work):
    from autarky.evaluate.stage import evaluate
    from autarky.evaluate.suite import build_suite

    none_in_ukrainian = SuiteConfig(suite_languages=["uk"])
    with pytest.raises(UserError, match="too little held-out text in uk"):
        build_suite(work.corpus, work.workdir, none_in_ukrainian)
    result = evaluate(
        work.model, work.workdir, [work.corpus], [], EvalConfig(bpb_tokens=100, prompts=[]), none_in_ukrainian
    )
    assert result.metrics["tasks"] == {} and [i["kind"] for i in result.manifest["inputs"]] == [
        "model",
        "corpus",
    ]
