"""llama.cpp as a runner (`autarky.runner`): a model's GGUF export decoded by llama-cpp-python's low-level API.

On a CPU, llama.cpp reads the weights near the memory's bandwidth, several times faster than
PyTorch's matrix-vector products at batch 1, so this is how autarky generates and serves on CPUs
when it can. Only the forward passes are llama.cpp's: our tokenizer makes the ids, our sampler
picks from the logits and our text policy decides what is sent, so both runners give the same
answers (the tests hold them to it at f32).

Continuous batching maps onto llama.cpp's sequences: every running row and the staged prompt own a
sequence id with its own KV cells (`kv_unified` off: each sequence attends over its own cells
only); a decode step is one `llama_decode` of a batch holding one token of every running row. A
released row's cells are removed, and its sequence id goes back to the pool.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autarky.console import UserError, console
from autarky.governor import ThreadGovernor

GGUF_DTYPES = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0"}  # serving precision → GGUF type


def available() -> str | None:
    """None when llama-cpp-python imports, else why not (one sentence a user can act on)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return (
            f"llama-cpp-python is not installed ({e}); pip install 'autarky[llamacpp]' builds it "
            "(a few minutes, once), or use --engine torch"
        )
    return None


def _api():
    """llama-cpp-python's ctypes API, its messages sent to our log (its own callback prints them all)."""
    global _log_callback
    problem = available()
    if problem:
        raise UserError(problem)
    import llama_cpp

    if _log_callback is None:
        _log_callback = llama_cpp.llama_log_callback(_log)  # kept alive: C holds the pointer
        llama_cpp.llama_log_set(_log_callback, None)
        llama_cpp.llama_backend_init()
    return llama_cpp


_log_callback = None
LOG = logging.getLogger("autarky.llamacpp")


def _log(level: int, text: bytes, user_data) -> None:
    """llama.cpp's messages at debug, its errors as errors (GGML_LOG_LEVEL_ERROR is 4 in ggml.h)."""
    LOG.log(logging.ERROR if level == 4 else logging.DEBUG, text.decode("utf-8", "replace").rstrip())


class LlamaCppRunner:
    """A GGUF file in llama.cpp with `slots` running rows of `context` tokens, plus one staged prompt."""

    name = "llama.cpp"

    def __init__(
        self,
        gguf: Path,
        slots: int = 1,
        context: int | None = None,
        threads: int = 0,
        batch: int = 512,
    ):
        """`threads` 0: every core while they run faster than half of them (`ThreadGovernor`)."""
        self.api = api = _api()
        params = api.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = api.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise UserError(f"llama.cpp could not load {gguf}: it is not a GGUF file it can read")
        trained = api.llama_model_n_ctx_train(self.model)
        self.context = min(context or trained, trained)
        self.slots = slots
        self.vocab_size = api.llama_vocab_n_tokens(api.llama_model_get_vocab(self.model))
        self.width = api.llama_model_n_embd(self.model)
        self.device = torch.device("cpu")
        self.batch_size = max(batch, slots)
        self.governor = None if threads else ThreadGovernor(os.cpu_count() or 1)
        self.threads = threads or self.governor.most
        self.ctx = self._context(slots + 1, self.threads, _is_f32(gguf))
        self.memory = api.llama_get_memory(self.ctx)
        self.batch = api.llama_batch_init(self.batch_size, 0, 1)
        self.free = list(range(slots, -1, -1))  # sequence ids, popped from the end: 0 first
        self.rows: list[int] = []  # rows[r]: the sequence id of running row r
        self.positions = [0] * (slots + 1)  # tokens each sequence holds
        self.staged: int | None = None

    def _context(self, sequences: int, threads: int, exact: bool):
        api = self.api
        params = api.llama_context_default_params()
        params.n_ctx = self.context * sequences
        params.n_seq_max = sequences
        params.n_batch = params.n_ubatch = self.batch_size
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        params.pooling_type = api.LLAMA_POOLING_TYPE_NONE  # `hidden` reads every token's state
        if exact:  # an f32 model keeps f32 keys and values, as PyTorch does: equal answers, not close
            params.type_k = params.type_v = api.GGML_TYPE_F32
            params.flash_attn_type = api.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = api.llama_init_from_model(self.model, params)
        if not ctx:
            raise UserError(
                f"llama.cpp could not make a context of {sequences} × {self.context} tokens: "
                "lower --slots or --max-model-len"
            )
        return ctx

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.api.llama_batch_free(self.batch)
            self.api.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.api.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        try:
            self.close()
        except (TypeError, AttributeError):  # at interpreter exit the library may be gone first
            pass

    # ------------------------------------------------------------ the runner contract

    def stage(self) -> None:
        if self.staged is not None:  # the last staged prompt never joined (scored, embedded, failed)
            self._forget(self.staged)
        self.staged = self.free.pop()

    def prefill(self, chunk: list[int], all_logits: bool = False) -> torch.Tensor:
        seq = self.staged
        outputs = len(chunk) if all_logits else 1
        self._decode([(token, seq) for token in chunk], first_output=len(chunk) - outputs)
        return self._logits(outputs)

    def join(self, row: int) -> None:
        assert row == len(self.rows), "rows join in order"
        self.rows.append(self.staged)
        self.staged = None

    def decode(self, tokens: list[int]) -> torch.Tensor:
        self._decode(list(zip(tokens, self.rows, strict=True)), first_output=0)
        return self._logits(len(tokens))

    def release(self, row: int, scrub: bool = False) -> None:
        """Free `row`'s cells (llama.cpp keeps nothing of a removed sequence: no scrub needed)."""
        self._forget(self.rows[row])
        self.rows[row] = self.rows[-1]
        self.rows.pop()

    def hidden(self, chunk: list[int]) -> torch.Tensor:
        api = self.api
        api.llama_set_embeddings(self.ctx, True)
        try:
            self._decode([(token, self.staged) for token in chunk], first_output=0)
            states = api.llama_get_embeddings(self.ctx)
            return torch.from_numpy(np.ctypeslib.as_array(states, shape=(len(chunk), self.width)).copy())
        finally:
            api.llama_set_embeddings(self.ctx, False)

    def clear(self) -> None:
        self.api.llama_memory_clear(self.memory, True)
        self.free = list(range(self.slots, -1, -1))
        self.rows, self.staged = [], None
        self.positions = [0] * (self.slots + 1)

    # ------------------------------------------------------------ llama.cpp calls

    def _forget(self, seq: int) -> None:
        self.api.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.positions[seq] = 0
        self.free.append(seq)

    def _decode(self, entries: list[tuple[int, int]], first_output: int) -> None:
        """One `llama_decode` of (token, sequence id) entries; outputs from entry `first_output` on."""
        if len(entries) > self.batch_size:
            raise ValueError(f"{len(entries)} tokens in one step; the batch holds {self.batch_size}")
        b = self.batch
        for i, (token, seq) in enumerate(entries):
            if self.positions[seq] >= self.context:
                raise ValueError(f"a sequence is past its {self.context}-token context")
            b.token[i] = token
            b.pos[i] = self.positions[seq]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i >= first_output
            self.positions[seq] += 1
        b.n_tokens = len(entries)
        if self.governor and (threads := self.governor.threads()) != self.threads:
            self.api.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads
        start = time.perf_counter()
        status = self.api.llama_decode(self.ctx, b)
        if self.governor:
            self.governor.observe(len(entries), time.perf_counter() - start)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def _logits(self, rows: int) -> torch.Tensor:
        data = self.api.llama_get_logits(self.ctx)
        return torch.from_numpy(np.ctypeslib.as_array(data, shape=(rows, self.vocab_size)).copy())


def gguf_for(model_path: Path, dtype: str) -> Path:
    """The model's GGUF at a serving precision (fp32 → f32, bf16, int8 → q8_0).

    A model artifact's export lives in its workspace as an `export` artifact, made by `autarky
    export` the first time and reused after (its sha256 checked against its manifest each time);
    a checkpoint directory made elsewhere is converted into a temporary file, gone at exit.
    """
    from autarky import artifact
    from autarky.gguf import FILE, ExportConfig, export, write_gguf

    config = ExportConfig(dtype=GGUF_DTYPES[dtype])
    if not (model_path / artifact.MANIFEST).is_file():
        folder = Path(tempfile.mkdtemp(prefix="autarky-gguf-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        console.print(f"converting {model_path} to GGUF ({config.dtype}) for llama.cpp in {folder}")
        write_gguf(model_path, folder / FILE, config.dtype)
        return folder / FILE
    model = artifact.load(model_path, "model")
    console.print(f"llama.cpp engine: {model.name} as GGUF {config.dtype} (exported once, reused after)")
    result = export(model, model_path.parent.parent, config)
    path = result.path / FILE
    if artifact.sha256_file(path) != result.manifest["files"][FILE]["sha256"]:
        raise UserError(
            f"{path} differs from the sha256 in its manifest: it changed after it was exported; "
            f"`autarky export {model_path} --dtype {config.dtype} --force` makes it again"
        )
    return path


def _is_f32(gguf: Path) -> bool:
    """Whether the GGUF's matrices are f32 (read from its header, not its name)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    return all(t.tensor_type.name == "F32" for t in reader.tensors)
