"""The CLI's help teaches: every verb listed with its summary, an example that uses real options."""

import dataclasses
import re
import socket
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer.main
from typer.testing import CliRunner

from autarky.cli import app
from autarky.data.config import CurateConfig
from autarky.data.executor import Executor
from autarky.gguf import ExportConfig
from autarky.options import default_of, flags_of
from autarky.serve import ServeConfig
from autarky.train import TrainConfig
from tests.conftest import cli_env

VERBS = {
    "demo",
    "curate",
    "tokenizer",
    "tokenize",
    "train",
    "generate",
    "chat",
    "serve",
    "export",
    "ls",
    "verify",
    "lineage",
}


def _help(*args: str) -> str:
    env = {**cli_env("work"), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "autarky.cli", *args, "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _commands() -> dict:
    return typer.main.get_command(app).commands


def test_top_level_help_lists_every_verb_with_its_summary():
    """Checked by emptying a verb's docstring and by dropping a verb from the panel: each fails here (the
    old test only looked for the verb's name anywhere, which the tagline alone satisfies)."""
    commands = _commands()
    assert VERBS <= set(commands)
    text = _help()
    for name, command in commands.items():
        summary = (command.help or "").strip().splitlines()[0]
        assert summary, f"{name} has no help"
        row = re.search(rf"^│ {re.escape(name)} +(.+?) *│$", text, re.MULTILINE)
        assert row, f"{name} is not a row of the commands panel"
        assert summary.startswith(row.group(1).strip().rstrip("…")), name


def test_every_verb_has_an_example_whose_options_exist():
    """An example that names an option the verb lacks fails here (checked with --minutez)."""
    for name, command in _commands().items():
        text = _help(name)
        example = re.search(rf"Example: (autarky {re.escape(name)}\b.*)$", text, re.MULTILINE)
        assert example, f"`autarky {name} --help` shows no example"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*|-[a-z](?=[\s=]|$))", example.group(1)):
            assert flag in known, f"the example of {name} uses {flag}, which {name} does not take"


def test_every_option_says_what_it_does():
    for name, command in _commands().items():
        for param in command.params:
            if isinstance(param, typer.core.TyperOption) and param.name != "help":
                assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help"


def _flag_and_value(f: dataclasses.Field, hint) -> tuple[list[str], object]:
    """Arguments that set field `f` to something other than its default, and that value."""
    default = default_of(f)
    flag = flags_of(f)[0]
    if isinstance(default, bool):
        on, _, off = flag.partition("/")
        return [off if default else on], not default
    if isinstance(default, dict):
        key, value = next(iter(default.items())) if default else ("k", "v")
        if isinstance(value, dict):
            inner, old = next(iter(value.items()))
            new = old + 1 if isinstance(old, int | float) else "x"
            return [flag, f"{key}.{inner}={new}"], {**default, key: {**value, inner: new}}
        new = value / 2 if isinstance(value, float) else "v2"
        return [flag, f"{key}={new}"], {**default, key: new}
    if isinstance(default, list):
        return [flag, "a", flag, "b"], ["a", "b"]
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    new = {int: 7, float: 0.375, str: "chosen", Path: Path("/tmp/chosen")}[kind]
    return [flag, str(new)], new


def _received(monkeypatch, cls, target: str, argv: list[str]):
    """Run the CLI with `argv`, catching the config the stage at `target` is handed."""
    seen = {}

    def stage(*args, **kwargs):
        seen.update({type(v).__name__: v for v in (*args, *kwargs.values())})
        if "engine" in kwargs:  # curate takes how it runs as plain arguments
            seen["Executor"] = Executor(kwargs["engine"], kwargs["workers"] or 0, kwargs["ray_address"])
        return made

    metrics = dict.fromkeys(("parameters", "steps", "val_loss", "val_bpb", "tokens_per_s"), 1)
    made = SimpleNamespace(  # an artifact as the CLI reads one after the stage: its next commands need these
        metrics=metrics,
        path=Path("x"),
        name="x",
        kind="x",
        id="x",
        workspace=Path("work").resolve(),
        inputs=list,
    )
    monkeypatch.setattr(target, stage)
    monkeypatch.setattr("autarky.artifact.resolve", lambda *a: made)
    monkeypatch.setattr("autarky.cli.models._model_dir", lambda *a: Path("x"))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return seen[cls.__name__]


CONFIGS = [
    (TrainConfig, "autarky.train.pretrain.train", ["train", "tokens"]),
    (ServeConfig, "autarky.serve.serve", ["serve", "model"]),
    (CurateConfig, "autarky.data.curate.curate", ["curate", "src", "--json"]),
    (Executor, "autarky.data.curate.curate", ["curate", "src", "--json"]),
    (ExportConfig, "autarky.gguf.export", ["export", "model"]),
]


@pytest.mark.parametrize(("cls", "target", "argv"), CONFIGS, ids=[c[0].__name__ for c in CONFIGS])
def test_every_config_field_can_be_set_from_the_cli(monkeypatch, cls, target, argv):
    """Each field of the stage's config, set on the command line, reaches the stage; the fields the
    CLI sets another way (tags, through --tag) say so in their help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            assert "--" in f.metadata["help"], f"{cls.__name__}.{f.name}: say which option sets it"
            continue
        args, expected = _flag_and_value(f, hints[f.name])
        config = _received(monkeypatch, cls, target, [*argv, *args])
        value = getattr(config, f.name)
        if cls is CurateConfig and f.name == "languages":
            expected = sorted(expected)
        assert value == expected, f"{' '.join(args)} gave {f.name}={value!r}"
        defaults = _received(monkeypatch, cls, target, argv)
        # as the config itself defaults it (TrainConfig resolves max_steps from --minutes)
        assert getattr(defaults, f.name) == getattr(cls(), f.name) or f.name == "audit_log"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_cli_starts_no_thread_before_it_isolates():
    """numpy and pyarrow start threads on import, and a network namespace holds only the thread that
    enters it: the CLI must read every config without them (this failed when CurateConfig lived
    beside the pipeline in curate.py, which imports both)."""
    code = "import os, autarky.cli; print(len(os.listdir('/proc/self/task')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env("work"))
    assert out.stdout.strip() == "1", out.stderr


# What `make demo` leaves (autarky/demo.py run_demo, workspace ./work): the documentation of the Python
# that ran it, the instruction set made from it, and artifacts whose names end in recipe hashes, which a
# help example cannot know: it names those `latest`.
DEMO_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
DEMO_FILES = [
    f"work/sources/python-{DEMO_VERSION}-docs",
    f"work/sources/python-{DEMO_VERSION}-docs/library/json.txt",
    f"work/sources/python-{DEMO_VERSION}-docs-chat.jsonl",
]
ARTIFACT_OPTIONS = {"corpus", "init", "tasks", "uses"}  # options that take an artifact or a source file
FROM_ELSEWHERE = {("import", "source")}  # weights a user downloaded: no demo makes them
NOT_ARTIFACTS = {"prompt"}


def _examples(text: str) -> list[str]:
    return re.findall(r"\[bold\](autarky [^\[]+)\[/\]", text or "")


def _named_wrongly(command, line: str) -> list[str]:
    """Each artifact or file an example names that `make demo` does not leave behind."""
    import fnmatch
    import shlex

    words = shlex.split(line.split(" #")[0])
    verb, args = words[1], words[2:]
    params = command.make_context(verb, args, resilient_parsing=True).params
    wrong = []
    for param in command.params:
        if not isinstance(param, typer.core.TyperArgument) and param.name not in ARTIFACT_OPTIONS:
            continue
        if param.name in NOT_ARTIFACTS or (verb, param.name) in FROM_ELSEWHERE:
            continue
        values = params.get(param.name)
        for value in values if isinstance(values, list | tuple) else [values]:
            value = str(value) if value is not None else None
            if value not in (None, "latest") and not any(fnmatch.fnmatch(f, value) for f in DEMO_FILES):
                wrong.append(f"{verb} {param.name}={value}")
    return wrong


def test_every_example_names_what_make_demo_leaves():
    """`work/model/demo` was in four examples and docs/serving.md, and no demo ever made it (checked:
    it fails here, as does a made-up `ruslit-1a2b3c4d`)."""
    commands = _commands()
    wrong = []
    for name, command in commands.items():
        lines = _examples(command.help)
        assert lines, f"{name} has no example"
        for line in lines:
            wrong += _named_wrongly(command, line)
    serving = (Path(__file__).parents[1] / "docs" / "serving.md").read_text()
    served = re.findall(r"^(?:\S+=\S+ )?(autarky serve .*)$", serving, re.MULTILINE)
    assert served
    for line in served:
        wrong += _named_wrongly(commands["serve"], line)
    assert not wrong, f"examples name what `make demo` does not make: {wrong}"
    assert _named_wrongly(commands["chat"], "autarky chat work/model/demo")


TYPE_MARKERS = re.compile(r"<(bool|int|float|str|path|text|list\[)", re.IGNORECASE)


def test_help_shows_no_python_types():
    """Typer showed `<bool>` beside every flag and `<list[str]>` beside repeatable options."""
    runner = CliRunner()
    for args in ([], *([name] for name in _commands())):
        text = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}, color=False).output
        assert "Usage:" in text, text
        assert not TYPE_MARKERS.search(text), (
            f"autarky {' '.join(args)} --help: {TYPE_MARKERS.search(text)[0]}"
        )
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--max-steps +N ", train) and re.search(r"--resume +Continue", train)
    assert re.search(r"Usage: \S+ train \[OPTIONS\] \[?TOKENS\]?\s", train), train  # not {tokens}


def test_version_and_shell_completion():
    from autarky import __version__

    env = cli_env("work")
    version = subprocess.run(
        [sys.executable, "-m", "autarky.cli", "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.strip() == f"autarky {__version__}"
    script = subprocess.run(  # the shell named, not detected from the process tree (CI has no shell above it)
        [sys.executable, "-m", "autarky.cli", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        env={**env, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert script.returncode == 0 and "complete" in script.stdout, script.stderr


def test_mistakes_name_the_flag_not_the_field(monkeypatch):
    """A config checked by field (`max_steps, batch_size ... must be at least 1`) reads to the user as
    the flags they typed; a sampling mistake names --top-p, not top_p."""
    tokens = SimpleNamespace(path=Path("x"), name="x", kind="tokens", workspace=Path("work").resolve())
    monkeypatch.setattr("autarky.artifact.resolve", lambda *a: tokens)
    result = CliRunner().invoke(app, ["train", "x", "--batch-size", "0"])
    message = str(result.exception)
    assert "--batch-size" in message and not re.search(r"\b[a-z]+_[a-z_]+", message), message
    monkeypatch.setattr("autarky.cli.models._load_for_generation", lambda *a: (None, None))
    result = CliRunner().invoke(app, ["generate", "x", "hi", "--top-p", "2"])
    assert "--top-p must be" in str(result.exception), result.output


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    """uvicorn found the port busy only after loading the model, and printed a trace."""
    (tmp_path / "config.json").write_text("{}")  # the port is checked before the model is even read
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "autarky.cli", "serve", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            env=cli_env(tmp_path / "work"),
            timeout=60,
        )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is in use (another server?); choose one with --port"
    )
