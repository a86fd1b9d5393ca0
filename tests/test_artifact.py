import json
import shutil
import subprocess
import sys

import pytest

from autarky import artifact, offline
from autarky.console import UserError
from tests.conftest import cli_env


def _build(workdir, name="a", config=None, content=b"hello", inputs=(), sources=None):
    builder = artifact.Builder(workdir, "eval", name, config or {"x": 1}, list(inputs), sources)
    with builder:
        (builder.dir / "data.bin").write_bytes(content)
        builder.metrics = {"n": 1}
        return builder.finish()


def _edit(a, change):
    """Change a manifest in place as a forger would; with `reseal`, recompute its id and seal too."""
    path = a.path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def _reseal(manifest):
    manifest["id"] = artifact.content_id(manifest)
    manifest["seal"] = artifact.seal_of(manifest)


def _problems(path):
    return [str(p) for p in artifact.verify(path)[1]]


def test_manifest_fields_and_content_addressed_id(tmp_path):
    a = _build(tmp_path)
    m = json.loads((a.path / "manifest.json").read_text())
    for key in (
        "kind",
        "name",
        "id",
        "seal",
        "recipe",
        "network",
        "created",
        "inputs",
        "sources",
        "config",
        "files",
        "producer",
        "metrics",
    ):
        assert key in m
    assert m["files"]["data.bin"]["bytes"] == 5 and m["id"].startswith("sha256:")
    b = _build(tmp_path / "other")
    assert b.id == a.id  # same kind, config, inputs and bytes: same id
    assert m["network"] == offline.network_mode() and m["schema"] == "autarky.manifest/2"
    c = _build(tmp_path / "third", content=b"hellO")
    assert c.id != a.id


def test_unfinished_directory_is_never_input(tmp_path):
    (tmp_path / "eval" / "half").mkdir(parents=True)
    with pytest.raises(UserError, match="not a finished artifact"):
        artifact.load(tmp_path / "eval" / "half")
    finished, unfinished = artifact.list_workspace(tmp_path)
    assert finished == [] and unfinished == [tmp_path / "eval" / "half"]


def test_failed_stage_leaves_nothing_behind(tmp_path):
    builder = artifact.Builder(tmp_path, "eval", "boom", {})
    with pytest.raises(RuntimeError), builder:
        (builder.dir / "part").write_text("x")
        raise RuntimeError("stage failed")
    assert not builder.dir.exists()


def test_verify_names_changed_missing_and_added_files(tmp_path):
    a = _build(tmp_path)
    assert artifact.verify(a.path)[1] == []
    (a.path / "data.bin").write_bytes(b"jello")
    (a.path / "extra.txt").write_text("sneaky")
    problems = [str(p) for p in artifact.verify(a.path)[1]]
    assert any("data.bin" in p and "changed" in p for p in problems)
    assert any("extra.txt" in p for p in problems)
    (a.path / "data.bin").unlink()
    assert any("data.bin: missing" in str(p) for p in artifact.verify(a.path)[1])


def test_one_changed_byte_in_any_artifact_kind_is_named(pipeline, trained, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(pipeline.workdir, work)
    model_dir = work / "model" / trained.name
    targets = {
        "corpus": next((work / "corpus" / pipeline.corpus.name / "shards").glob("train-*.parquet")),
        "tokenizer": work / "tokenizer" / pipeline.tokenizer.name / "tokenizer.json",
        "tokens": work / "tokens" / pipeline.tokens.name / "train.bin",
        "model": model_dir / "model.safetensors",
    }
    env = cli_env(work)
    for kind, path in targets.items():
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        out = subprocess.run(
            [sys.executable, "-m", "autarky.cli", "verify", str(model_dir)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 1, kind
        assert path.name in out.stdout and "MISMATCH" in out.stdout, (kind, out.stdout)
        path.write_bytes(original)
    ok = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "verify", str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr


SOURCE = {"path": "docs/a.txt", "sha256": "sha256:" + "0" * 64, "bytes": 3, "documents": 1}
FORGERIES = {
    "sources": lambda m: m["sources"][0].update(documents=1000),
    "metrics": lambda m: m["metrics"].update(n=2),
    "recipe": lambda m: m.update(recipe="sha256:" + "1" * 64),
    "producer": lambda m: m["producer"].update(autarky="9.9"),
    "created": lambda m: m.update(created="1999-01-01T00:00:00+00:00"),
    "network": lambda m: m.update(network="namespace"),
    "source path": lambda m: m["sources"][0].update(path="elsewhere.txt"),
}


@pytest.mark.parametrize("field", FORGERIES)
def test_every_field_of_the_manifest_is_sealed(tmp_path, field):
    """Issue 17: verify said "ok" after sources, metrics, recipe, producer and created were forged.

    The id covers what the artifact is (so identical runs share it); the seal covers every field.
    Checked against the old artifact.py (fields the old manifest lacks left out): verify found nothing.
    """
    a = _build(tmp_path, sources=[dict(SOURCE)])
    assert _problems(a.path) == []
    _edit(a, FORGERIES[field])
    assert any("seal does not match" in p for p in _problems(a.path)), field


def test_identical_runs_share_the_id_and_the_seal_tells_them_apart(tmp_path):
    """The id stays a content address, so reuse and the "identical runs" promise hold; the seal is per run."""
    a = _build(tmp_path / "one")
    b = _build(tmp_path / "two", name="b")
    assert a.id == b.id and a.manifest["seal"] != b.manifest["seal"]
    assert artifact.seal_of(a.manifest) == a.manifest["seal"]


def test_a_resealed_input_is_caught_by_the_seal_downstream(tmp_path):
    """What a forger who recomputes every hash of one artifact meets: the next artifact names its seal.

    Only recomputing the seals of every artifact downstream too goes unnoticed, which is why the last
    seal is worth recording somewhere the forger cannot write.
    """
    up = _build(tmp_path, name="up")
    down = _build(tmp_path, name="down", inputs=[up])
    assert down.manifest["inputs"][0]["seal"] == up.manifest["seal"]
    forged = _edit(up, lambda m: (m["metrics"].update(n=99), _reseal(m)))
    assert _problems(up.path) == [] and forged["id"] == up.id
    assert any("input eval/up: was sealed again" in p for p in _problems(down.path))


def test_an_input_redirected_out_of_the_workspace_is_refused(tmp_path):
    """Issue 17: verify said "ok" after an input was redirected out of the workspace with `../`.

    The forger copies the input outside and recomputes the id and seal, so only the path gives it away.
    Checked against the old artifact.py (no seal to recompute): verify found nothing.
    """
    work = tmp_path / "work"
    up = _build(work, name="up")
    down = _build(work, name="down", inputs=[up])
    shutil.copytree(up.path, tmp_path / "outside" / "eval" / "up")
    _edit(down, lambda m: (m["inputs"][0].update(name="../../outside/eval/up"), _reseal(m)))
    problems = _problems(down.path)
    assert any("not a kind/name inside the workspace" in p for p in problems), problems
    with pytest.raises(UserError, match="inside the workspace"):
        artifact.load(down.path).inputs()


def test_an_input_reached_through_a_linked_directory_is_named(tmp_path):
    """Issue 17: a linked directory in the workspace's place of an input went unnoticed."""
    work = tmp_path / "work"
    up = _build(work, name="up")
    down = _build(work, name="down", inputs=[up])
    shutil.move(up.path, tmp_path / "up-elsewhere")
    (work / "eval" / "up").symlink_to(tmp_path / "up-elsewhere")
    assert any("reached through a symbolic link" in p for p in _problems(down.path))


def test_a_file_swapped_for_a_symlink_is_named(tmp_path):
    """Issue 17: verify said "ok" after a file was swapped for a symlink to the same bytes.

    Checked against the old artifact.py: it followed the link and found the bytes unchanged.
    """
    a = _build(tmp_path / "work")
    (tmp_path / "same.bin").write_bytes(b"hello")
    (a.path / "data.bin").unlink()
    (a.path / "data.bin").symlink_to(tmp_path / "same.bin")
    problems = _problems(a.path)
    assert problems == [
        f"eval/a: data.bin: is a symbolic link (to {tmp_path / 'same.bin'}), where the manifest lists a regular file"
    ]


def test_dot_files_and_linked_directories_are_named(tmp_path):
    """Issue 17: verify said "ok" after extra dot-files and linked directories were added.

    Checked against the old artifact.py: the linked directory and the file inside it went unnamed.
    """
    a = _build(tmp_path / "work")
    (tmp_path / "loot").mkdir()
    (tmp_path / "loot" / "more.bin").write_text("x")
    (a.path / ".hidden").write_text("x")
    (a.path / ".cache").mkdir()
    (a.path / ".cache" / "blob").write_text("x")
    (a.path / "linked").symlink_to(tmp_path / "loot")
    problems = _problems(a.path)
    assert any(".hidden: not in the manifest" in p for p in problems)
    assert any(".cache/blob: not in the manifest" in p for p in problems)
    assert any("linked: is a symbolic link" in p for p in problems)


def test_a_stage_cannot_seal_a_link_or_a_name_that_leaves_its_directory(tmp_path):
    builder = artifact.Builder(tmp_path, "eval", "linky", {})
    with pytest.raises(UserError, match="regular files only"), builder:
        (builder.dir / "link").symlink_to(tmp_path)
        builder.finish()
    for name in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(UserError, match="not a name"):
            artifact.Builder(tmp_path, "eval", name, {})


def test_a_manifest_of_the_older_schema_is_named_and_made_again(tmp_path):
    """Manifests of schema /1 (no seal) still load and verify their files, but verify names what is not covered;
    a re-run with the same recipe makes the artifact again under the current schema."""
    a = _build(tmp_path)
    assert artifact.Builder(tmp_path, "eval", "a", {"x": 1}).existing() == a  # current: reused

    def downgrade(m):
        for key in ("seal", "network"):
            del m[key]
        m["schema"] = artifact.OLD_SCHEMA
        m["id"] = artifact.content_id(m)

    _edit(a, downgrade)
    problems = _problems(a.path)
    assert len(problems) == 1 and "older schema autarky.manifest/1" in problems[0]
    assert "metrics" in problems[0] and "created" in problems[0]
    builder = artifact.Builder(tmp_path, "eval", "a", {"x": 1})
    assert builder.existing() is None and not builder.dir.exists()  # older: cleared, to be made again


def test_a_malformed_manifest_is_a_clear_error(tmp_path):
    a = _build(tmp_path)
    _edit(a, lambda m: m.update(inputs={"kind": "eval"}))
    with pytest.raises(UserError, match="wrong shape"):
        artifact.verify(a.path)
