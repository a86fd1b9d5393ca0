"""Who may call the server, and the append-only record of what they did.

Keys are kept only as SHA-256 digests; a caller is named in logs by its key id, an HMAC-SHA256 of
its key under a secret of the deployment's (kept beside the audit log, owner-only), never by the
key: without the secret, a log cannot be used to test guesses at keys. The audit log is JSON Lines
opened in append mode (created readable by its owner only), one line per request, written when the
response has been sent; the text of prompts and completions goes in only when the operator asks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

from autarky.console import UserError

SECRET_FILE = "key-id.secret"  # beside the audit log: the key of the key ids' HMAC
MAX_FIELD_CHARS = 256  # a logged string other than prompt and completion is cut to this
# Characters that end a line for some readers (Python's splitlines, JavaScript) though JSON leaves them raw.
LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def key_id(key: str, secret: bytes) -> str:
    """How the audit log names a caller: a keyed hash of its key (64 bits of HMAC-SHA256)."""
    return "key-" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


def key_id_secret(audit_log: Path | None) -> bytes:
    """The deployment's key-id secret beside the audit log, made (owner-only) on first use.

    Without an audit log the ids are written nowhere, so a secret for this run alone does.
    """
    if audit_log is None:
        return secrets.token_bytes(32)
    path = Path(audit_log).parent / SECRET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written whole under another name, then linked into place: two servers starting at once
            # agree on one secret, and nobody reads a half-written one.
            draft = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        if path.stat().st_mode & 0o077:
            raise UserError(f"{path} is readable by others than its owner; chmod 600 it")
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read or make the key-id secret {path}: {e}") from e


class Keys:
    def __init__(self, keys: list[str], secret: bytes | None = None):
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self._digests = {hashlib.sha256(k.encode()).digest(): key_id(k, self.secret) for k in keys}

    @classmethod
    def load(
        cls, keys: list[str], keys_file: Path | None, env: str | None = None, secret: bytes | None = None
    ) -> Keys:
        """Keys from the command line, a file (one a line, # comments) and an environment variable."""
        keys = list(keys) + (env or "").replace(",", " ").split()
        if keys_file is not None:
            if not Path(keys_file).is_file():
                raise UserError(f"the API keys file {keys_file} does not exist")
            for line in Path(keys_file).read_text().splitlines():
                line = line.strip()  # a line that starts with # is a comment; a key may hold a #
                if line and not line.startswith("#"):
                    keys.append(line)
        for k in keys:
            if len(k) < 8 or any(c.isspace() for c in k):
                raise UserError("an API key must be at least 8 characters with no spaces")
        return cls(keys, secret)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> str | None:
        """The key id if `presented` is one of the keys, else None (compared in constant time)."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, kid in self._digests.items():
            if hmac.compare_digest(known, digest):
                found = kid
        return found


class AuditLog:
    def __init__(self, path: Path | None, content: bool = False):
        self.path = Path(path) if path else None
        self.content = content
        self._lock = threading.Lock()
        self._file = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Owner-only: with --audit-content it holds prompts. (An existing file keeps its mode.)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            except OSError as e:
                raise UserError(f"cannot open the audit log {self.path}: {e}") from e

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        record = {k: v if k in ("prompt", "completion") else _capped(v) for k, v in record.items()}
        if not self.content:
            record = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
        line = json.dumps(record, ensure_ascii=False).translate(LINE_BREAKS) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _capped(value):
    """A string cut to MAX_FIELD_CHARS (a 1 MB `user` must not make a 1 MB line); others as they are."""
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f"…[{len(value) - MAX_FIELD_CHARS} more characters]"
    return value
