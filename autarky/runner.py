"""What runs a model's forward passes for generation: the contract, and the PyTorch runner.

`autarky generate` and the serving engine do the same things with a model: feed a prompt a chunk
at a time, then decode one token for each running sequence; the sampling and the text rules are
theirs. A runner does only the forward passes and owns the cache, so the same loop serves a
PyTorch model (`TorchRunner`, here) or a GGUF file in llama.cpp (`autarky.llamacpp.LlamaCppRunner`).

The contract: one *staged* sequence at a time takes its prompt (`stage`, then `prefill` chunks);
`join(row)` makes it running row `row`, always the next free one, so running rows are 0..B-1;
`decode` feeds one token to every running row and returns their logits in row order; `release`
frees a row and moves the last running row into it, keeping them packed. `hidden` feeds a chunk
of the staged sequence and returns its final hidden states (after the last norm), for embeddings.
Logits and states come back as float tensors on `device`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from autarky.console import UserError, console
from autarky.model import Llama

T = TypeVar("T")


class Runner(Protocol):
    name: str  # "torch" or "llama.cpp": what the manifest and the server's log say
    slots: int  # running rows its cache holds
    context: int  # tokens one sequence may hold, prompt and completion
    vocab_size: int
    device: torch.device

    def stage(self) -> None: ...
    def prefill(self, chunk: list[int], all_logits: bool = False) -> torch.Tensor: ...
    def join(self, row: int) -> None: ...
    def decode(self, tokens: list[int]) -> torch.Tensor: ...
    def release(self, row: int, scrub: bool = False) -> None: ...
    def hidden(self, chunk: list[int]) -> torch.Tensor: ...
    def clear(self) -> None: ...


class TorchRunner:
    """A PyTorch `Llama` with a `KVCache` of `slots` rows and a one-row cache for the staged prompt.

    A staged prompt is prefilled in its own row so a long prompt never touches the running batch;
    `join` copies its keys and values into the shared cache, which costs far less than the prefill.
    """

    name = "torch"

    def __init__(self, model: Llama, slots: int = 1, context: int | None = None):
        self.model = model
        self.slots = slots
        config = model.config
        self.context = min(context or config.max_position_embeddings, config.max_position_embeddings)
        self.vocab_size = config.vocab_size
        self.device = model.model.embed_tokens.weight.device
        dtype = model.model.norm.weight.dtype
        self.cache = model.new_cache(slots, self.context, device=self.device, dtype=dtype)
        self.staged = model.new_cache(1, self.context, device=self.device, dtype=dtype)
        self.running = 0

    def stage(self) -> None:
        self.staged.reset(0)

    def prefill(self, chunk: list[int], all_logits: bool = False) -> torch.Tensor:
        ids = torch.tensor([chunk], device=self.device)
        logits, _ = self.model(ids, cache=self.staged, last_only=not all_logits)
        return logits[0]

    def join(self, row: int) -> None:
        self.cache.take(self.staged, 0, row)
        self.running = row + 1

    def decode(self, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, device=self.device)[:, None]
        logits, _ = self.model(ids, cache=self.cache, last_only=True)
        return logits[:, -1]

    def release(self, row: int, scrub: bool = False) -> None:
        """Free `row`; the last running row moves into it.

        A failed sequence's row is zeroed first (`scrub`): a NaN left in it would reach its next
        owner, whose attention reads the row's stale positions with weight 0, and 0 × NaN is NaN.
        """
        if scrub:
            self.cache.scrub(row)
        last = self.running - 1
        if row != last:
            self.cache.move(last, row)
        self.cache.reset(last)
        self.running = last

    def hidden(self, chunk: list[int]) -> torch.Tensor:
        """The chunk's hidden states after the last RMSNorm, run in the staged cache after what came
        before it (causal attention makes them the same as the whole input's)."""
        states = []
        hook = self.model.model.norm.register_forward_hook(lambda module, args, out: states.append(out))
        try:
            self.model(torch.tensor([chunk], device=self.device), cache=self.staged, last_only=True)
        finally:
            hook.remove()
        return states[0][0]

    def clear(self) -> None:
        self.cache.lengths.zero_()
        self.staged.reset(0)
        self.running = 0


ENGINES = ("auto", "torch", "llama.cpp")


def choose_engine(engine: str) -> str:
    """The engine `auto` means here: llama.cpp on a CPU when llama-cpp-python is installed (it decodes
    several times faster there: docs/serving.md), PyTorch on a GPU or when llama.cpp is missing."""
    from autarky import llamacpp

    if engine not in ENGINES:
        raise UserError(f"unknown --engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "llama.cpp" and (problem := llamacpp.available()):
        raise UserError(problem)
    if engine != "auto":
        return engine
    if torch.cuda.is_available():
        return "torch"
    return "torch" if llamacpp.available() else "llama.cpp"


def open_runner(
    model_path: Path,
    engine: str,
    dtype: str = "fp32",
    slots: int = 1,
    context: int | None = None,
    threads: int = 0,
    batch: int = 512,
) -> Runner:
    """A runner for the model directory: `engine` torch, llama.cpp (on its GGUF export, made now if
    missing) or auto. Under auto, a model llama.cpp cannot take is run by PyTorch, with a note."""
    from autarky import llamacpp
    from autarky.serve.precision import check_dtype, load_model

    check_dtype(dtype)
    chosen = choose_engine(engine)
    if engine == "auto" and chosen == "torch" and not torch.cuda.is_available():
        console.print(f"[yellow]note:[/] running on PyTorch, slower on a CPU: {llamacpp.available()}")
    if engine == "auto" and chosen == "llama.cpp" and _model_type(Path(model_path)) == "deepseek_v3":
        console.print(
            "[yellow]note:[/] running on PyTorch: GGUF export does not map DeepSeek-V3 models to llama.cpp"
        )
        chosen = "torch"
    if chosen == "llama.cpp":
        try:
            gguf = llamacpp.gguf_for(Path(model_path), dtype)
            return llamacpp.LlamaCppRunner(gguf, slots, context, threads, batch)
        except UserError as e:
            if engine != "auto":
                raise
            console.print(f"[yellow]note:[/] running on PyTorch: llama.cpp cannot take this model ({e})")
    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(load_model(Path(model_path), dtype), slots, context)


def _model_type(model_path: Path) -> str | None:
    """config.json's model_type, or None where it cannot be read (loading the model says why)."""
    import json

    try:
        return json.loads((model_path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def outside_this_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) run in a thread that ends when it returns; its result or its exception.

    Why: PyTorch and llama.cpp share one OpenMP runtime, and each thread that runs a parallel region
    keeps a team of workers for as long as it lives. With more workers alive than cores, libgomp
    stops spinning at its barriers and sleeps at each one, and llama.cpp meets a barrier after every
    operation: a second team in the process (a server's main thread that loaded the model) halves
    its decode speed. Loading in a thread that ends leaves the engine's thread the only team.
    """
    box: dict = {}

    def call() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller, raised there
            box["error"] = e

    thread = threading.Thread(target=call, name="autarky-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
