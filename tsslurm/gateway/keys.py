"""The gateway's API keys: the file `api_keys` in the deployment's state directory (0600), one key
per line as `<name> sha256:<hex digest of the key>`; `#` starts a comment. Keys themselves are
shown once, when created (`tsslurm gateway --create-key NAME`, or the first start of a gateway
with no key file), and never stored. Deleting a line revokes that key; the running gateway reads
the file again when it changes. No key in the file: every request is refused (401)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from pathlib import Path

from tsslurm.errors import UserError

KEYS_FILE = "api_keys"
PREFIX = "tss-"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER = ("# tsslurm gateway API keys: `<name> sha256:<digest>` per line. Create one with\n"
           "# `tsslurm gateway --create-key NAME`; delete a line to revoke that key.\n")


class KeyFileError(UserError):
    """An API key file that cannot be read or written safely."""


def keys_file(state_dir: Path) -> Path:
    return state_dir / KEYS_FILE


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(state_dir: Path, name: str) -> str:
    """A new key named `name`, added to the file (created 0600); returns the key, shown once."""
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    file = keys_file(state_dir)
    existing = read_digests(file) if file.exists() else {}
    if name in existing:
        raise KeyFileError(f"a key named {name!r} exists already in {file}; pick another name "
                           "(or delete its line to revoke it first)")
    key = PREFIX + secrets.token_urlsafe(32)
    _append(file, f"{name} {digest(key)}\n")
    return key


def read_digests(file: Path) -> dict[str, str]:
    """Name -> digest. Refuses a file other users can read or write."""
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        text = file.read_text()
    except OSError as error:
        raise KeyFileError(f"cannot read the API key file {file}: {error.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(f"{file} is open to other users (mode {mode:o}): run `chmod 600 {file}`")
    return _parse(text, file)


def _parse(text: str, file: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"sha256:[0-9a-f]{64}", parts[1]):
            raise KeyFileError(f"{file}, line {number}: expected `<name> sha256:<64 hex digits>`")
        found[parts[0]] = parts[1]
    return found


def _append(file: Path, line: str) -> None:
    fresh = not file.exists()
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        if fresh:
            handle.write(_HEADER)
        handle.write(line)
    os.chmod(file, 0o600)


class KeyChecker:
    """Checks bearer keys against the file, re-reading it (at most every `recheck_s`) when it
    changes (contents or mode). A file that becomes unreadable or unsafe admits no one."""

    def __init__(self, file: Path, recheck_s: float = 1.0):
        self.file = file
        self.recheck_s = recheck_s
        self.problem: str | None = None
        self._digests: frozenset[str] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._reload()

    @property
    def count(self) -> int:
        return len(self._digests)

    def allows(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            self._reload()
        wanted = digest(key)
        return any(hmac.compare_digest(wanted, known) for known in self._digests)

    def _reload(self) -> None:
        try:
            status = self.file.stat()
            stamp = (status.st_mtime_ns, status.st_ctime_ns, status.st_mode)
        except OSError:
            stamp = None
        if stamp == self._stamp and self.problem is None:
            return
        self._stamp = stamp
        try:
            self._digests = frozenset(read_digests(self.file).values())
            self.problem = None
        except KeyFileError as error:
            self._digests = frozenset()
            self.problem = str(error)
