"""`autarky card`: model card, CycloneDX 1.6 ML-BOM (validated against the official schema, shipped by
cyclonedx-python-lib) and the EU training-content summary, all from a model's manifests."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autarky import artifact
from autarky.artifact import Builder, write_json
from autarky.card import TO_FILL, CardConfig, card, walk
from autarky.console import UserError
from tests.conftest import TINY_TRAIN, cli_env, write_sources
from tests.test_cli import _flag_and_value, _received

SECTIONS = ("1.1", "1.2", "1.3", "2.1", "2.2.1", "2.2.2", "2.3", "2.4", "2.5", "2.6", "3.1", "3.2", "3.3")


@pytest.fixture
def workspace(tmp_path, trained) -> Path:
    """A copy of the session's model and its lineage, so each test may add evals or break files."""
    workdir = tmp_path / "work"
    for a in walk([trained]):
        shutil.copytree(a.path, workdir / a.kind / a.name)
    return workdir


def model_in(workdir: Path) -> artifact.Artifact:
    return artifact.load(workdir / "model" / "tiny-test")


def header(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def bom_of(c: artifact.Artifact) -> dict:
    return json.loads((c.path / "bom.cdx.json").read_text())


def schema_errors(bom: dict) -> list[str]:
    """Every error the official CycloneDX 1.6 JSON schema (and the SPDX and JSF schemas it refers to),
    as cyclonedx-python-lib ships them, finds; nothing is fetched (the network guard is on)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom), all_errors=True)
    return [f"{list(e.data.absolute_path)}: {e.data.message[:200]}" for e in errors or []]


def test_a_card_from_the_manifests_of_a_model_with_no_eval(workspace):
    model = model_in(workspace)
    corpus = walk([model])[0]
    made = card(model, workspace)
    assert made.kind == "card" and [i["name"] for i in made.manifest["inputs"]] == ["tiny-test"]
    assert set(made.manifest["files"]) == {"README.md", "bom.cdx.json", "training-content-summary.md"}

    readme = (made.path / "README.md").read_text()
    meta = header(readme)
    assert meta["language"] == list(corpus.metrics["languages"])  # en, ru: the corpus's, most text first
    assert meta["datasets"] == [corpus.id] and meta["license"] == "unknown"
    assert meta["pipeline_tag"] == "text-generation" and "base_model" not in meta
    (result,) = meta["model-index"][0]["results"]
    assert {"type": "bits_per_byte", "value": round(model.metrics["val_bpb"], 6)} in result["metrics"]
    for section in (
        "Model details",
        "Training data",
        "Training procedure",
        "Evaluation",
        "Intended use",
        "Lineage",
    ):
        assert f"## {section}" in readme
    assert f"{model.metrics['parameters']:,}" in readme and model.manifest["seal"] in readme
    assert "No eval artifact of this model" in readme and TO_FILL in readme

    summary = (made.path / "training-content-summary.md").read_text()
    for section in SECTIONS:
        assert f"### {section} " in summary, section
    assert "[x] less than 1 billion tokens" in summary and f"{TO_FILL} These sources carry no" in summary
    assert f"{corpus.metrics['documents_in']:,}" in summary  # the unfiled sources' documents
    assert made.metrics["to_fill_in"]["training-content-summary.md"] > 0


def test_the_bom_validates_against_the_official_cyclonedx_1_6_schema(workspace):
    made = card(model_in(workspace), workspace, CardConfig(provider="Example Ltd", license="apache-2.0"))
    bom = bom_of(made)
    assert bom["specVersion"] == "1.6" and schema_errors(bom) == []

    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["licenses"] == [
        {"license": {"name": "apache-2.0"}}
    ]
    corpora = [c for c in bom["components"] if c["type"] == "data" and c["name"].startswith("src-")]
    refs = {c["bom-ref"] for c in [model, *bom["components"], *bom["formulation"][0]["components"]]}
    assert model["modelCard"]["modelParameters"]["datasets"] == [{"ref": corpora[0]["bom-ref"]}]
    for dependency in bom["dependencies"]:  # every link names a component of this BOM
        assert {dependency["ref"], *dependency["dependsOn"]} <= refs
    software = {c["name"]: c for c in bom["formulation"][0]["components"]}
    assert {"autarky", "python", "torch"} <= set(software) and software["torch"]["purl"].startswith(
        "pkg:pypi/torch@"
    )
    assert corpora[0]["data"][0]["governance"]["owners"] == [{"organization": {"name": "Example Ltd"}}]

    broken = json.loads(json.dumps(bom))
    broken["metadata"]["component"]["type"] = "neural-network"
    broken["components"][0]["hashes"] = [{"alg": "SHA-256", "content": "not hex"}]
    assert len(schema_errors(broken)) >= 2  # the validator bites


def fake_eval(workdir: Path, model: artifact.Artifact, name: str, results: dict) -> artifact.Artifact:
    """An eval artifact as `autarky eval` makes one: results.json, the model as its input."""
    with Builder(workdir, "eval", name, {"name": name}, [model]) as b:
        write_json(b.dir / "results.json", results)
        return b.finish()


def test_eval_results_become_the_cards_and_the_boms_metrics(workspace):
    model = model_in(workspace)
    without = card(model, workspace)
    fake_eval(  # the shape of autarky/evaluate/stage.py: autarky.eval/1
        workspace,
        model,
        "suite",
        {
            "schema": "autarky.eval/1",
            "bpb": {
                "ruslit": {"split": "val", "overall": {"bpb": 2.5}, "by_language": {"ru": {"bpb": 2.75}}}
            },
            "tasks": {
                "next-sentence-ru": {"n": 40, "metrics": {"acc": 0.625, "acc_stderr": 0.05, "chance": 0.25}}
            },
        },
    )
    fake_eval(workspace, model, "plain", {"tasks": {"cloze-en": {"acc_norm": 0.375}}, "bpb": {"val": 3.25}})
    made = card(model, workspace)
    assert made.id != without.id and {i["name"] for i in made.manifest["inputs"]} == {
        "tiny-test",
        "suite",
        "plain",
    }

    readme = (made.path / "README.md").read_text()
    found = {
        (r["dataset"]["name"], m["type"], m["value"])
        for r in header(readme)["model-index"][0]["results"]
        for m in r["metrics"]
    }
    assert {("next-sentence-ru", "acc", 0.625), ("ruslit val, ru", "bits_per_byte", 2.75)} <= found
    assert {("cloze-en", "acc_norm", 0.375), ("val", "bits_per_byte", 3.25)} <= found
    assert "0.625 ± 0.05 (chance 0.25)" in readme and "No eval artifact" not in readme
    assert "chance" not in {m for _, m, _ in found}  # a reference, not a score of the model

    bom = bom_of(made)
    metrics = bom["metadata"]["component"]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    assert {"type": "acc", "value": "0.625", "slice": "next-sentence-ru (eval/suite)"} in metrics
    assert {"eval/suite", "eval/plain"} <= {c["bom-ref"] for c in bom["components"]}
    assert schema_errors(bom) == [] and bom["serialNumber"] != bom_of(without)["serialNumber"]


def test_the_same_lineage_gives_the_same_card_and_verify_covers_it(workspace):
    model = model_in(workspace)
    first = card(model, workspace)
    again = card(model, workspace, force=True)  # made anew: every byte the same
    assert again.id == first.id and bom_of(again)["serialNumber"] == bom_of(first)["serialNumber"]
    checked, problems = artifact.verify(again.path)
    assert problems == [] and [a.kind for a in checked][:2] == ["card", "model"]
    readme = again.path / "README.md"
    readme.write_text(readme.read_text().replace("tiny-test", "tiny-best"))
    _, problems = artifact.verify(again.path)
    assert [(p.path, p.what.split(" ")[0]) for p in problems] == [("README.md", "changed")]


def test_a_changed_shard_byte_gets_no_card_and_a_rebuilt_corpus_changes_the_recorded_hashes(
    workspace, tmp_path
):
    """The card records the hashes of the lineage as it is: tampered, it refuses (verify names the file);
    rebuilt from changed text, every recorded hash of the corpus, and the BOM's serial, change."""
    from autarky.data.curate import curate
    from autarky.tokenizer import train_tokenizer
    from autarky.tokens import tokenize
    from autarky.train import TrainConfig, train

    model = model_in(workspace)
    corpus = walk([model])[0]
    shard = next(corpus.path.glob("shards/train-*.parquet"))
    original = shard.read_bytes()
    shard.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    with pytest.raises(UserError, match=r"does not verify \(corpus/.*shards/train-.*changed"):
        card(model, workspace)
    shard.write_bytes(original)
    before = bom_of(card(model, workspace))

    source = write_sources(tmp_path / "src", n_docs=12)
    first = sorted(source.glob("*.txt"))[0]
    first.write_text(first.read_text().replace("a", "b", 1))  # one byte of one document
    changed = curate([source], workspace, workers=1)
    tok = train_tokenizer(changed, workspace, vocab_size=300)
    tokens = tokenize(changed, tok, workspace, workers=1)
    quick = {**TINY_TRAIN, "max_steps": 1, "batch_size": 2, "seq_len": 32, "eval_tokens": 128}
    rebuilt = train(tokens, workspace, TrainConfig(**quick), name="rebuilt")
    after = bom_of(card(rebuilt, workspace))

    def shard_hashes(bom: dict) -> dict:
        """{shard: sha256} of the one corpus component: its files under shards/."""
        found = {}
        for component in bom["components"]:
            for f in component.get("components", []):
                if component["bom-ref"].startswith("corpus/") and f["name"].startswith("shards/"):
                    found[f["name"]] = f["hashes"][0]["content"]
        return found

    old, new = shard_hashes(before), shard_hashes(after)
    assert old.keys() & new.keys() and all(new[k] != old[k] for k in old.keys() & new.keys())
    assert new == {
        k: v["sha256"][7:] for k, v in changed.manifest["files"].items() if k.startswith("shards/")
    }
    assert after["serialNumber"] != before["serialNumber"] and schema_errors(after) == []


def test_card_of_what_is_not_a_model_is_one_sentence(workspace, tmp_path):
    corpus = walk([model_in(workspace)])[0]
    plain = tmp_path / "plain"
    plain.mkdir()
    for target, expected in (
        (corpus.path, "is a corpus, but a model is needed here"),
        (plain, "no finished model"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "autarky.cli", "card", str(target)],
            capture_output=True,
            text=True,
            env=cli_env(workspace),
        )
        assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert not (workspace / "card").exists()  # no half-made artifact


def test_an_imported_model_names_its_checkpoint_and_its_declared_licence(workspace, tmp_path):
    from autarky.interop import import_model

    checkpoint = tmp_path / "Open-Model-1B"
    shutil.copytree(model_in(workspace).path, checkpoint, ignore=shutil.ignore_patterns("manifest.json"))
    (checkpoint / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Open model\n")
    model, _ = import_model(checkpoint, workspace)
    made = card(model, workspace)
    readme = (made.path / "README.md").read_text()
    meta = header(readme)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == ["Open-Model-1B"]
    assert "imported from the checkpoint `Open-Model-1B`, not trained here" in readme
    summary = (made.path / "training-content-summary.md").read_text()
    assert "`autarky import`" in readme and "1.2 Model identification" in summary
    bom = bom_of(made)
    assert bom["metadata"]["component"]["licenses"] == [{"license": {"name": "apache-2.0"}}]
    assert schema_errors(bom) == []


def test_every_card_setting_can_be_set_from_the_cli(monkeypatch):
    for f in dataclasses.fields(CardConfig):
        args, expected = _flag_and_value(f, str)
        config = _received(monkeypatch, CardConfig, "autarky.card.card", ["card", "model", *args])
        assert getattr(config, f.name) == expected, f.name
    assert _received(monkeypatch, CardConfig, "autarky.card.card", ["card", "model"]) == CardConfig()


def test_a_fine_tuned_model_names_its_base_and_its_chat_data(workspace, tmp_path):
    from autarky.data.chat import curate_chat
    from autarky.train.config import SFTConfig
    from autarky.train.sft import sft

    turns = [
        [
            {"role": "user", "content": f"What is {i} and {i}? Write to me at user{i}@example.com"},
            {"role": "assistant", "content": f"{i} and {i} make {2 * i}."},
        ]
        for i in range(24)
    ]
    conversations = tmp_path / "support.jsonl"
    conversations.write_text("".join(json.dumps({"messages": t}) + "\n" for t in turns))
    chat = curate_chat([conversations], workspace)
    quick = SFTConfig(max_steps=1, seq_len=64, batch_size=2, eval_tokens=128, lora_rank=4)
    tuned = sft(model_in(workspace), chat, workspace, quick)
    made = card(tuned, workspace)
    readme = (made.path / "README.md").read_text()
    meta = header(readme)
    assert meta["base_model"] == ["tiny-test"] and chat.id in meta["datasets"]
    assert f"### chat/{chat.name}" in readme and "Personal data redacted: email 24" in readme
    summary = (made.path / "training-content-summary.md").read_text()
    assert "fine-tuned from model/tiny-test" in summary and "`autarky curate-chat`" in readme
    bom = bom_of(made)
    parameters = bom["metadata"]["component"]["modelCard"]["modelParameters"]
    assert (
        parameters["approach"] == {"type": "supervised"}
        and {"ref": f"chat/{chat.name}"} in parameters["datasets"]
    )
    assert schema_errors(bom) == []
