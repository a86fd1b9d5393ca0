"""The card stage: a model's lineage, as its manifests record it, turned into the documents people ask for.

`autarky card MODEL` writes a `card` artifact whose inputs are the model and every eval artifact of
it in the workspace:
- `README.md` (readme.py): a model card with the Hugging Face metadata header;
- `bom.cdx.json` (bom.py): a CycloneDX 1.6 ML-BOM;
- `training-content-summary.md` (summary.py): the EU AI Office's public summary template for the
  training content of general-purpose AI models (July 2025), filled from the lineage.

Everything comes from the manifests (and the files they hash: the model's `config.json`, an eval's
`results.json`), so the card is checked first: a lineage that `verify` faults gets no card, and the
same inputs give the same bytes and the same card id. What no manifest can know (who provides the
model, what it is for) is marked `[to fill in]`.

Conventions read from the lineage:
- an eval artifact's `results.json` (autarky/evaluate/stage.py, `autarky.eval/1`) holds
  `{"tasks": {TASK: {"metrics": {METRIC: VALUE, METRIC_stderr: …}}}, "bpb": {CORPUS: {"split",
  "overall": {"bpb"}, "by_language": {LANG: {"bpb"}}}}}`: each task metric (with its stderr) and the
  overall and per-language bits per byte become the card's metrics. A task's metrics may also sit
  bare (`{TASK: {METRIC: VALUE}}`), and any other `bpb` shape gives one metric per number in it;
- a corpus tag `license=...` is the data's licence, and `source_type=...` (public, licensed, private,
  crawled, user, synthetic, other) files its sources under the EU summary's section 2;
- a model whose config or metrics say `origin: imported` was imported; its `license` there is the
  model's declared licence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from autarky import artifact
from autarky.artifact import Artifact
from autarky.console import UserError, console
from autarky.options import setting

TO_FILL = "[to fill in]"
README, BOM, SUMMARY = "README.md", "bom.cdx.json", "training-content-summary.md"


@dataclass
class CardConfig:
    provider: str = setting(
        "", help="Who provides the model (organisation): the card's developer, the BOM's manufacturer."
    )
    license: str = setting(
        "", help="The model's licence, an SPDX id such as apache-2.0 (default: what its lineage declares)."
    )


@dataclass
class Lineage:
    """A model, everything it was made from (inputs before what was made of them), and its evaluations."""

    model: Artifact
    upstream: list[Artifact]  # every artifact the model came from, each once, the model last
    evals: list[Artifact]
    eval_data: list[Artifact]  # what the evals scored on that the model did not come from
    results: dict[str, dict]  # eval name -> its results.json

    def of_kind(self, kind: str) -> list[Artifact]:
        return [a for a in self.upstream if a.kind == kind]

    @property
    def corpora(self) -> list[Artifact]:
        return self.of_kind("corpus")

    @property
    def training_data(self) -> list[Artifact]:
        """Corpora and chat corpora: what the model, or a model it came from, was trained on."""
        return [a for a in self.upstream if a.kind in ("corpus", "chat")]

    @property
    def base_models(self) -> list[Artifact]:
        """The models this one was fine-tuned or made from."""
        return [a for a in self.of_kind("model") if a.path != self.model.path]

    @property
    def tokenizer(self) -> Artifact | None:
        direct = self.model.inputs("tokenizer")
        found = direct or self.of_kind("tokenizer")
        return found[-1] if found else None

    @property
    def languages(self) -> dict[str, dict]:
        """{lang: {documents, bytes}} kept in every corpus, the most text first ('und' left out)."""
        total: dict[str, dict] = {}
        for corpus in self.corpora:
            for lang, n in corpus.metrics.get("languages", {}).items():
                into = total.setdefault(lang, {"documents": 0, "bytes": 0})
                into["documents"] += n["documents"]
                into["bytes"] += n["bytes"]
        return dict(sorted(((k, v) for k, v in total.items() if k != "und"), key=lambda kv: -kv[1]["bytes"]))

    @property
    def model_config(self) -> dict:
        """The model's config.json (hashed in its manifest, checked before the card is made)."""
        path = self.model.path / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def data_license(self) -> str | None:
        licenses = sorted({t for c in self.training_data for t in tags_of(c, "license").values()})
        return " AND ".join(licenses) or None

    def model_license(self, override: str = "") -> str | None:
        """The licence the card's settings give, else the one the model or the model it came from declares."""
        if override:
            return override
        for a in [self.model, *reversed(self.base_models)]:
            if declared := licence_name(recorded(a, "license")):
                return declared
        return None


def recorded(a: Artifact, key: str):
    """A fact a stage recorded about its artifact, in its config or its metrics (None when neither has it)."""
    return a.config.get(key) if isinstance(a.config, dict) and key in a.config else a.metrics.get(key)


def licence_name(value) -> str | None:
    """A licence as recorded: a plain name, or what `import` found (front matter, else a LICENSE file)."""
    if not isinstance(value, dict):
        return str(value) if value else None
    declared, name = value.get("declared"), value.get("name")
    if declared and (declared != "other" or not name):
        return str(declared)
    if name:
        return str(name)
    return f"as its {value['file']} says: {value.get('title', '')}".strip() if value.get("file") else None


def imported(a: Artifact) -> bool:
    return recorded(a, "origin") == "imported"


def imported_from(a: Artifact) -> str | None:
    """The name of the checkpoint directory an imported model was read from."""
    sources = a.manifest.get("sources") or []
    return Path(sources[0]["path"]).parent.name if imported(a) and sources else None


def tags_of(corpus: Artifact, key: str) -> dict[str, str]:
    """{scope: value} of a tag on a corpus: '' for every source, else the source argument it was set on."""
    config = corpus.config if isinstance(corpus.config, dict) else {}
    found = {"": config["tags"][key]} if key in config.get("tags", {}) else {}
    for scope, tags in config.get("source_tags", {}).items():
        if key in tags:
            found[scope] = tags[key]
    return found


def walk(start: list[Artifact]) -> list[Artifact]:
    """Every artifact upstream of `start`, each once, every input before the artifacts made from it."""
    seen: set[Path] = set()
    order: list[Artifact] = []

    def visit(a: Artifact) -> None:
        if a.path in seen:
            return
        seen.add(a.path)
        for upstream in a.inputs():
            visit(upstream)
        order.append(a)

    for a in start:
        visit(a)
    return order


def evals_of(model: Artifact, workdir: Path) -> list[Artifact]:
    """The eval artifacts in the workspace made against this very model manifest (by its seal)."""
    finished, _ = artifact.list_workspace(workdir)
    seal = model.manifest.get("seal")
    return [
        a
        for a in finished
        if a.kind == "eval"
        and any(i["kind"] == "model" and i.get("seal") == seal for i in a.manifest["inputs"])
    ]


def read_results(evaluation: Artifact) -> dict:
    """An eval's results.json, as its manifest hashed it."""
    path = evaluation.path / "results.json"
    if not path.is_file() or "results.json" not in evaluation.manifest["files"]:
        return {}
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run `autarky eval`") from e
    return results if isinstance(results, dict) else {}


def gather(model: Artifact, workdir: Path) -> Lineage:
    """The lineage of `model` and of its evaluations, refused when `verify` finds anything amiss in it."""
    evals = evals_of(model, workdir)
    checked: set = set()  # each artifact re-hashed once, however many evals share it
    for a in evals or [model]:  # an eval's lineage holds the model's
        _, problems = artifact.verify(a.path, checked)
        if problems:
            raise UserError(
                f"the lineage of model/{model.name} does not verify ({problems[0]}"
                + (f", and {len(problems) - 1} more" if len(problems) > 1 else "")
                + "), and a card records the lineage as its manifests say it is; `autarky verify` names every mismatch"
            )
    upstream = walk([model])
    known = {a.path for a in upstream}
    eval_data = [a for a in walk(evals) if a.path not in known and a.kind != "eval"]
    return Lineage(model, upstream, evals, eval_data, {e.name: read_results(e) for e in evals})


def card(
    model: Artifact,
    workdir: Path,
    config: CardConfig | None = None,
    name: str | None = None,
    force: bool = False,
) -> Artifact:
    """Write the card artifact of `model`: model card, ML-BOM and EU training-content summary."""
    from autarky.card.bom import write_bom
    from autarky.card.readme import write_readme
    from autarky.card.summary import write_summary

    if model.kind != "model":
        raise UserError(f"{model.path} is a {model.kind}, but a card is made for a model")
    config = config or CardConfig()
    lineage = gather(model, workdir)
    inputs = [model, *lineage.evals]
    recipe = asdict(config)
    name = name or artifact.default_name(model.name, "card", recipe, inputs)
    builder = artifact.Builder(workdir, "card", name, recipe, inputs)
    if (found := builder.existing(force=force)) is not None:
        console.print(f"reusing finished card {found.path}")
        return found
    with builder:
        write_readme(builder.dir / README, lineage, config)
        bom = write_bom(builder.dir / BOM, lineage, config)
        write_summary(builder.dir / SUMMARY, lineage, config)
        builder.metrics = {
            "serial_number": bom["serialNumber"],
            "evals": len(lineage.evals),
            "artifacts": len(lineage.upstream) + len(lineage.evals) + len(lineage.eval_data),
            "to_fill_in": {
                f: (builder.dir / f).read_text(encoding="utf-8").count(TO_FILL)
                for f in (README, BOM, SUMMARY)
            },
        }
        return builder.finish()
