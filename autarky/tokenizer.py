"""Train and load byte-level BPE tokenizers, render the chat template, and measure fertility.

A tokenizer artifact is a directory Hugging Face reads as is: `tokenizer.json` (the `tokenizers`
model), `tokenizer_config.json` (special tokens, chat template) and `special_tokens_map.json`, so
`transformers.AutoTokenizer.from_pretrained(dir)` loads it offline and gives the same ids as
`Tokenizer` here.

Byte-level BPE starts from all 256 byte values, so no text is ever unknown; the price is that a
Cyrillic letter (two UTF-8 bytes) or an emoji (four) may be split across tokens, which is why
streaming output goes through `StreamDecoder` instead of decoding token by token.

Any Hugging Face tokenizer (Llama 3, Qwen, a SentencePiece-style BPE) loads the same way: its
special tokens come from `tokenizer_config.json`, its stop tokens also from the model's
`generation_config.json`, and its chat template is rendered with Jinja exactly as transformers'
`apply_chat_template` renders it (`ChatTemplate`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import cached_property
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from autarky import artifact
from autarky.artifact import Artifact, Builder, compose_name, default_name
from autarky.console import UserError, console, progress

# The order is the id: 0..6 in every tokenizer we train, so models and chat data never disagree.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"
ROLES = ("system", "user", "assistant")

# The GPT-4 (cl100k) split: letters by Unicode class so Cyrillic words stay whole, digits in groups of
# at most three, punctuation runs apart from words, newlines on their own. Merges never cross these.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Jinja, as transformers renders it; `Tokenizer.apply_chat_template` builds the same ids directly.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# What transformers hands every chat template besides the messages: the named special tokens.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Files of a tokenizer directory, as transformers reads them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Private-use characters around a control token's text found in a message, so that it is encoded as text.
MARK_START, MARK_END = "\U000f0000", "\U000f0001"

DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MAX_TRAIN_BYTES = 200_000_000
DEFAULT_MAX_EVAL_BYTES = 20_000_000
# A pair seen once is a memorised string, not a pattern; this is also what makes "vocab too large" detectable.
MIN_FREQUENCY = 2
# What transformers is told; the model stage writes its own context length beside its copy.
MODEL_MAX_LENGTH = 2048
BATCH_DOCUMENTS = 256


# ---------------------------------------------------------------- the tokenizer


class StreamDecoder:
    """Turns token ids, one at a time, into text, holding back bytes until they form whole characters.

    Byte-level tokens are byte strings; an incremental UTF-8 decoder keeps an incomplete character
    (half a Cyrillic letter, three quarters of an emoji) until its last byte arrives. Bytes that can
    never be valid UTF-8 come out as U+FFFD rather than stall the stream.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        """Feed one id; return the text it completes (often "", never a broken character)."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id, self._skip_special))

    def finish(self) -> str:
        """Whatever is still held back at the end of the stream (a dangling partial character as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A tokenizer with its special tokens and chat template: one autarky trained, or any HF one."""

    def __init__(self, hf: HFTokenizer, settings: dict | None = None, generation: dict | None = None):
        # Text never turns into control tokens: a user message or a corpus document that contains
        # "<|end|>\n<|system|>" stays those characters, so nobody can forge a turn. Special ids come
        # only from code (the document start in the tokens stage, the chat template's pieces).
        hf.encode_special_tokens = True
        self.hf = hf
        self._byte_table: list[bytes] | None = None
        self._special_ids = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
        if settings is None and all(hf.token_to_id(t) is not None for t in SPECIAL_TOKENS):
            settings = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "chat_template": CHAT_TEMPLATE}
        settings = settings or {}
        self.special_tokens = {k: _token_text(settings.get(k)) for k in NAMED_TOKENS if settings.get(k)}
        template = settings.get("chat_template")
        if isinstance(template, list):  # several named templates: transformers uses "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = ChatTemplate(template, hf) if template else None
        generation = generation or {}
        stops = generation.get("eos_token_id")
        self._generation_stops = set(
            stops if isinstance(stops, list) else [stops] if stops is not None else []
        )
        self._generation_bos = generation.get("bos_token_id")
        # Whether a plain text starts with bos, as transformers' `tokenizer(text)` gives it: the config's
        # add_bos_token where it says, else whether the tokenizer's post-processor adds a token.
        adds = settings.get("add_bos_token")
        processor = hf.post_processor
        self.adds_bos = (
            adds if isinstance(adds, bool) else bool(processor and processor.num_special_tokens_to_add(False))
        )

    @classmethod
    def load(cls, source: Path | str | Artifact) -> Tokenizer:
        """From a tokenizer artifact, any directory holding `tokenizer.json` (a model, say), or the file.

        Beside it, `tokenizer_config.json` (special tokens, chat template), `chat_template.jinja`
        (transformers' newer place for the template) and `generation_config.json` (stop ids) are read
        when present.
        """
        path = source.path if isinstance(source, Artifact) else Path(source)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist; a tokenizer directory must hold tokenizer.json")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise UserError(f"{path} is not a readable tokenizer.json ({e})") from e
        settings = _read_json(path.parent / "tokenizer_config.json")
        if (path.parent / "chat_template.jinja").is_file():
            settings = {
                **(settings or {}),
                "chat_template": (path.parent / "chat_template.jinja").read_text(),
            }
        return cls(hf, settings, _read_json(path.parent / "generation_config.json"))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def id_of(self, token: str) -> int:
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise UserError(f"the tokenizer has no token {token!r}")
        return token_id

    def _named(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.id_of(token)

    @property
    def eos_id(self) -> int:
        eos = self._named("eos_token")
        if eos is None:
            raise UserError("the tokenizer names no eos_token in tokenizer_config.json")
        return eos

    @property
    def bos_id(self) -> int:
        """What starts a document (and a prompt): the bos token; where the tokenizer names none (Qwen),
        the model's generation_config's bos_token_id, else the eos token that separates documents."""
        bos = self._named("bos_token")
        if bos is None and isinstance(self._generation_bos, int) and self._generation_bos < self.vocab_size:
            bos = self._generation_bos
        return self.eos_id if bos is None else bos

    @property
    def pad_id(self) -> int:
        pad = self._named("pad_token")
        return self.eos_id if pad is None else pad

    @property
    def end_id(self) -> int:
        """The token that closes a chat turn: our `<|end|>`, else the eos token."""
        end = self.hf.token_to_id(END)
        return self.eos_id if end is None else end

    @property
    def stop_ids(self) -> set[int]:
        """Ids that end a generation: eos, the end of a turn, and any the model's generation_config lists."""
        return {self.eos_id, self.end_id, *self._generation_stops}

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no `<|bos|>` added (the tokens stage and chat template add it)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt to continue: bos first where this tokenizer starts texts with it (ours, Llama),
        not where it does not (Qwen), as transformers' `tokenizer(text)` gives it."""
        return ([self.bos_id] if self.adds_bos else []) + self.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like `encode` for many texts at once, on all cores (tokenizers' own thread pool)."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def decode_stream(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        """The exact bytes one token stands for (a special token: its text, or nothing when skipped).

        An id past the vocabulary stands for nothing: models often have more embedding rows than
        their tokenizer has tokens (Qwen pads 151,665 to 151,936), and a model can pick one.
        """
        if self._byte_table is None:
            self._byte_table = self._build_byte_table()
        if token_id in self._special_ids:
            return b"" if skip_special else self.hf.id_to_token(token_id).encode()
        return self._byte_table[token_id] if 0 <= token_id < len(self._byte_table) else b""

    def _build_byte_table(self) -> list[bytes]:
        """Bytes per id: byte-level BPE (GPT-2, Llama 3, Qwen) maps characters back to bytes;
        SentencePiece-style BPE (Llama 2, Mistral) writes a space as ▁ and a lone byte as <0xNN>."""
        decoder = json.dumps(json.loads(self.hf.to_str()).get("decoder"))
        if '"ByteLevel"' in decoder:
            char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
            as_bytes = lambda token: bytes(char_to_byte[c] for c in token)  # noqa: E731
        elif '"Metaspace"' in decoder or '"ByteFallback"' in decoder:
            as_bytes = _sentencepiece_bytes
        else:
            raise UserError(
                "streaming decode needs a byte-level or SentencePiece-style BPE tokenizer; this one's decoder is "
                + decoder[:80]
            )
        table = [b""] * self.vocab_size
        for token, token_id in self.hf.get_vocab(with_added_tokens=False).items():
            table[token_id] = as_bytes(token)
        for token_id, added in self.hf.get_added_tokens_decoder().items():
            table[token_id] = added.content.encode()  # added tokens are stored as plain text
        return table

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The ids of a conversation, as transformers' `apply_chat_template` gives them.

        A control token's text inside a message (say "<|im_end|>") is encoded as text, never as the
        control token, so a message cannot forge a turn.
        """
        if self.chat_template is None:
            raise UserError("the tokenizer has no chat template (tokenizer_config.json names none)")
        return self.chat_template.encode(messages, add_generation_prompt, self.special_tokens)


def _token_text(value) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    return value["content"] if isinstance(value, dict) else str(value)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value


def _sentencepiece_bytes(token: str) -> bytes:
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode()


class ChatTemplate:
    """A Jinja chat template rendered as transformers renders it: a sandbox that cannot change its
    inputs, trim_blocks and lstrip_blocks, loop controls, `{% generation %}` blocks, and the same
    globals (`raise_exception`, `strftime_now`, a JSON `tojson`, `namespace`, `dict`).

    The rendered text is encoded with special tokens recognised, as transformers does. What a
    message carries is marked first, so a control token's text from a message stays text.
    """

    def __init__(self, source: str, hf: HFTokenizer):
        from jinja2 import TemplateError

        self.source = source
        self._hf = hf
        controls = sorted((t.content for t in hf.get_added_tokens_decoder().values()), key=len, reverse=True)
        self._controls = re.compile("|".join(map(re.escape, controls))) if controls else None
        try:
            self._template = _jinja_environment().from_string(source)
        except TemplateError as e:
            raise UserError(f"the chat template does not compile: {e}") from e

    @cached_property
    def _markup(self) -> HFTokenizer:
        """The same tokenizer with control tokens recognised (made on first use: a copy of a large vocabulary)."""
        markup = HFTokenizer.from_str(self._hf.to_str())
        markup.encode_special_tokens = False
        return markup

    def render(self, messages: list[dict], add_generation_prompt: bool, special_tokens: dict) -> str:
        from jinja2 import TemplateError

        # As transformers does: keys whose value is None are dropped (OpenAI's content=None).
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **special_tokens,
            )
        except TemplateError as e:
            raise UserError(f"the chat template refused the conversation: {e}") from e

    def encode(self, messages: list[dict], add_generation_prompt: bool, special_tokens: dict) -> list[int]:
        """Render and encode: the template's text with control tokens recognised, a message's marked
        control-token text by the tokenizer itself, which reads none."""
        rendered = self.render(self._mark(messages), add_generation_prompt, special_tokens)
        ids: list[int] = []
        for i, piece in enumerate(re.split(f"{MARK_START}(.*?){MARK_END}", rendered, flags=re.DOTALL)):
            if i % 2:
                ids += self._hf.encode(piece, add_special_tokens=False).ids
            elif piece := piece.replace(MARK_START, "").replace(MARK_END, ""):  # a marker the template split
                ids += self._markup.encode(piece, add_special_tokens=False).ids
        return ids

    def _mark(self, value):
        if isinstance(value, str):
            value = value.replace(MARK_START, "").replace(MARK_END, "")
            return (
                self._controls.sub(lambda m: MARK_START + m.group() + MARK_END, value)
                if self._controls
                else value
            )
        if isinstance(value, dict):
            return {k: self._mark(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._mark(v) for v in value]
        return value


def _jinja_environment():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}…{% endgeneration %}` marks an assistant's tokens for training; it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """jinja's namespace, refusing names that start with "_" (the way out of a sandbox)."""

        def __init__(*args, **kwargs):  # noqa: N805 (jinja's own signature, so `namespace(self=…)` works)
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _check_name(name)
            super().__setitem__(name, value)

    def _check_name(name) -> None:
        if str(name).startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r}")

    class Dict:
        """`dict(...)` and `dict.fromkeys(...)` without the type's other attributes."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    )
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=lambda fmt: datetime.now().strftime(fmt),
        namespace=Namespace,
        dict=Dict(),
    )
    return env


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, which the ByteLevel pre-tokenizer uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


# ---------------------------------------------------------------- fertility


def fertility(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = BATCH_DOCUMENTS) -> dict:
    """How much text a token carries: UTF-8 bytes per token and tokens per whitespace-separated word.

    Higher bytes/token means shorter sequences for the same text: cheaper training and longer
    effective context. Tokens/word is the figure usually quoted across languages.
    """
    totals = {"documents": 0, "bytes": 0, "tokens": 0, "words": 0}
    for batch in _batched(texts, batch_size):
        for text, ids in zip(batch, tokenizer.encode_batch(batch), strict=True):
            totals["documents"] += 1
            totals["bytes"] += len(text.encode())
            totals["tokens"] += len(ids)
            totals["words"] += len(text.split())
    return _with_ratios(totals)


def _with_ratios(totals: dict) -> dict:
    return {
        **totals,
        "bytes_per_token": round(totals["bytes"] / totals["tokens"], 4) if totals["tokens"] else None,
        "tokens_per_word": round(totals["tokens"] / totals["words"], 4) if totals["words"] else None,
    }


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- the stage


def train_tokenizer(
    corpus: Artifact,
    workdir: Path,
    name: str | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    force: bool = False,
    max_train_bytes: int = DEFAULT_MAX_TRAIN_BYTES,
    max_eval_bytes: int = DEFAULT_MAX_EVAL_BYTES,
) -> Artifact:
    """Train a byte-level BPE tokenizer on a corpus's train split; measure it on the val split."""
    from autarky.data.corpus import shard_paths

    if corpus.kind != "corpus":
        raise UserError(f"{corpus.path} is a {corpus.kind}; a tokenizer is trained on a corpus")
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the 256 byte values and {len(SPECIAL_TOKENS)} special tokens "
            f"alone take {smallest}"
        )
    if not shard_paths(corpus, "train"):
        raise UserError(f"corpus {corpus.name} has no train documents to learn a tokenizer from")
    config = {
        "type": "byte-level-bpe",
        "vocab_size": vocab_size,
        "min_frequency": MIN_FREQUENCY,
        "split_pattern": SPLIT_PATTERN,
        "special_tokens": list(SPECIAL_TOKENS),
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": MODEL_MAX_LENGTH,
        "max_train_bytes": max_train_bytes,
        "max_eval_bytes": max_eval_bytes,
    }
    name = name or default_name(compose_name(corpus.name, f"bpe{vocab_size}"), "tokenizer", config, [corpus])
    builder = Builder(workdir, "tokenizer", name, config, [corpus])
    if (done := builder.existing(force)) is not None:
        console.print(f"reusing tokenizer {name} (same corpus and settings)")
        return done

    with builder:
        hf = train_bpe(_capped_texts(corpus, "train", max_train_bytes, "reading train text"), vocab_size)
        learned = hf.get_vocab_size(with_added_tokens=True)
        if learned < vocab_size:
            raise UserError(
                f"corpus {corpus.name} supports a vocabulary of at most {learned} tokens (every pair seen twice is "
                f"already merged); pass --vocab-size {learned} or less, or give it more text"
            )
        _write_files(hf, builder.dir)
        tokenizer = Tokenizer(hf)
        builder.metrics = {
            "vocab_size": tokenizer.vocab_size,
            **_val_metrics(tokenizer, corpus, max_eval_bytes),
        }
        return builder.finish()


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Our byte-level BPE trained on `texts`: the split pattern, special tokens and settings in one place."""
    hf = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def _new_tokenizer() -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    # transformers' plain `tokenizer(text)` starts a text with <|bos|>, as the model saw documents in
    # training; our `encode` asks for no special tokens, and the chat template writes its own.
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return hf


def _capped_texts(corpus: Artifact, split: str, max_bytes: int, label: str, columns=("text",)) -> Iterator:
    """Documents of a split (text, or dicts with `columns`) until `max_bytes` of text, with a progress bar."""
    from autarky.data.corpus import count_documents, iter_documents

    total = count_documents(corpus, split)
    seen = 0
    with progress() as bar:
        task = bar.add_task(label, total=total)
        for doc in iter_documents(corpus, split, columns):
            data = doc["text"].encode()
            if seen + len(data) > max_bytes:
                # The last document is cut at the cap, on a character boundary.
                doc["text"] = data[: max_bytes - seen].decode(errors="ignore")
                if doc["text"]:
                    yield doc if len(columns) > 1 else doc["text"]
                bar.update(task, completed=total)
                return
            seen += len(data)
            yield doc if len(columns) > 1 else doc["text"]
            bar.advance(task)


def _val_metrics(tokenizer: Tokenizer, corpus: Artifact, max_bytes: int) -> dict:
    from autarky.data.corpus import shard_paths

    if not shard_paths(corpus, "val"):
        return {"val": None}
    by_lang: dict[str, list[str]] = defaultdict(list)
    for doc in _capped_texts(corpus, "val", max_bytes, "measuring on val", ("text", "lang")):
        by_lang[doc.get("lang") or "und"].append(doc["text"])
    per_lang = {lang: fertility(tokenizer, texts) for lang, texts in sorted(by_lang.items())}
    overall = {k: sum(m[k] for m in per_lang.values()) for k in ("documents", "bytes", "tokens", "words")}
    return {"val": _with_ratios(overall), "val_by_lang": per_lang}


def _write_files(hf: HFTokenizer, directory: Path) -> None:
    """tokenizer.json plus the two files transformers reads for special tokens and the chat template."""
    hf.save(str(directory / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    chat_tokens = [t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)]
    artifact.write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": chat_tokens,
            "added_tokens_decoder": added,
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    artifact.write_json(
        directory / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": chat_tokens},
    )


def summary_rows(tokenizer_artifact: Artifact) -> list[tuple[str, str, str, str]]:
    """(language, documents, bytes/token, tokens/word) for the CLI's table, overall last."""
    m = tokenizer_artifact.metrics
    rows = [
        (lang, str(v["documents"]), str(v["bytes_per_token"]), str(v["tokens_per_word"]))
        for lang, v in (m.get("val_by_lang") or {}).items()
    ]
    if m.get("val"):
        v = m["val"]
        rows.append(("all", str(v["documents"]), str(v["bytes_per_token"]), str(v["tokens_per_word"])))
    return rows
