"""An auditor's local copy of the log: one directory, read and written only through here.

Files: `entries.jsonl` (one canonical entry per line), `checkpoint` (the last
verified checkpoint: the commit point) and `checkpoints/SIZE.note` (every
verified checkpoint).

Security rule: nothing outside the directory is ever read or written through
it. The directory is opened once (for writing, a symbolic link there is
refused) and every name in it is opened relative to that descriptor with
O_NOFOLLOW, so no link is followed, whatever is planted. A copy whose files
are not plain files (a symbolic link, a FIFO, a device) is refused, and so,
when it is to be written, is one whose files have other hard links (writing
would change them too). A file is replaced by writing a fresh name created exclusively in the
directory (O_CREAT|O_EXCL|O_NOFOLLOW), syncing it, and renaming it over the
old one; entries are appended in place and synced before the checkpoint that
commits them is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

from signer.errors import ConfigError, VerificationError

__all__ = ["MAX_LINE_BYTES", "LogDir"]

ENTRIES, CHECKPOINT, HISTORY = "entries.jsonl", "checkpoint", "checkpoints"
MAX_LINE_BYTES = 64 * 1024 * 1024  # an entry line without its newline: the largest response
_MAX_NOTE_BYTES = 64 * 1024
_SAFE = os.O_CLOEXEC | os.O_NOFOLLOW
_DIR = os.O_RDONLY | os.O_DIRECTORY | _SAFE
_READ = os.O_RDONLY | os.O_NONBLOCK  # NONBLOCK: a planted FIFO cannot hang the open


def _why(e: OSError, name: str | Path | None = None, dir_fd: int | None = None) -> str:
    """An OSError as words; O_NOFOLLOW|O_DIRECTORY on a link fails ELOOP or ENOTDIR."""
    if e.errno == errno.ELOOP or (name is not None and _is_link(name, dir_fd)):
        return "it is a symbolic link"
    return e.strerror or str(e)


def _is_link(name: str | Path, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class LogDir:
    """An open local copy (a context manager: it holds the directory's descriptors).

    `writable` (for `audit fetch`) creates the directory and `checkpoints/` if
    missing and refuses files with other hard links.
    """

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self.path = path
        self.entries = path / ENTRIES
        self.checkpoint = path / CHECKPOINT
        self.history = path / HISTORY
        self.writable = writable
        self._fd = self._open_root()
        self._history_fd: int | None = None
        try:
            self._history_fd = self._open_history()
            if writable:
                self._check_files()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LogDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._history_fd is not None:
            os.close(self._history_fd)
            self._history_fd = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- opening -----------------------------------------------------------------------

    def _open_root(self) -> int:
        if self.writable and not os.path.lexists(self.path):
            try:
                self.path.mkdir(parents=True)
            except OSError as e:
                raise ConfigError(f"cannot create {self.path}: {_why(e)}") from None
        try:  # the directory itself may be a link only when nothing is written
            return os.open(self.path, _DIR if self.writable else _DIR & ~os.O_NOFOLLOW)
        except OSError as e:
            if _why(e, self.path) == "it is a symbolic link":
                raise ConfigError(
                    f"{self.path} is a symbolic link; name the directory itself"
                ) from None
            raise ConfigError(f"cannot open the directory {self.path}: {_why(e)}") from None

    def _open_history(self) -> int | None:
        try:
            return os.open(HISTORY, _DIR, dir_fd=self._fd)
        except FileNotFoundError:
            if not self.writable:
                return None
        except OSError as e:
            raise VerificationError(
                f"{self.history}: refused: {_why(e, HISTORY, self._fd)}"
            ) from None
        try:
            os.mkdir(HISTORY, 0o755, dir_fd=self._fd)
            return os.open(HISTORY, _DIR, dir_fd=self._fd)
        except OSError as e:
            raise VerificationError(f"cannot create {self.history}: {_why(e)}") from None

    def _check_files(self) -> None:
        """Every file of the copy is a plain file of its own (before anything is written)."""
        for name in (ENTRIES, CHECKPOINT):
            self._check(name, self._fd)
        for name in self._note_names():
            self._check(name, self._require_history())

    def _check(self, name: str, dir_fd: int) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            raise VerificationError(f"{self._where(name, dir_fd)}: {_why(e)}") from None
        self._check_stat(st, name, dir_fd)

    def _check_stat(self, st: os.stat_result, name: str, dir_fd: int) -> None:
        where = self._where(name, dir_fd)
        if stat.S_ISLNK(st.st_mode):
            raise VerificationError(f"{where} is a symbolic link; a copy's files must be its own")
        if not stat.S_ISREG(st.st_mode):
            raise VerificationError(f"{where} is not a regular file")
        if self.writable and st.st_nlink != 1:
            raise VerificationError(
                f"{where} has {st.st_nlink - 1} other hard link(s); writing it would change "
                "them too: fetch into a new directory"
            )

    def _where(self, name: str, dir_fd: int) -> Path:
        return (self.history if dir_fd == self._history_fd else self.path) / name

    def _require_history(self) -> int:
        if self._history_fd is None:
            raise VerificationError(f"{self.history} does not exist")
        return self._history_fd

    def _open(self, name: str, flags: int, dir_fd: int, mode: int = 0o644) -> int:
        """`name` in the directory, never through a link; a plain file of its own."""
        try:
            fd = os.open(name, flags | _SAFE, mode, dir_fd=dir_fd)
        except (FileNotFoundError, FileExistsError):
            raise
        except OSError as e:
            raise VerificationError(f"{self._where(name, dir_fd)}: {_why(e)}") from None
        try:
            self._check_stat(os.fstat(fd), name, dir_fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- reading -----------------------------------------------------------------------

    def read_lines(self) -> Generator[bytes]:
        """entries.jsonl line by line, each with its newline (none on a cut last line)."""
        try:
            fd = self._open(ENTRIES, _READ, self._fd)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as f:
            n = 0
            while line := f.readline(MAX_LINE_BYTES + 2):
                if len(line.removesuffix(b"\n")) > MAX_LINE_BYTES:
                    raise VerificationError(
                        f"{self.entries}: line {n + 1} is over {MAX_LINE_BYTES} bytes"
                    )
                yield line
                n += 1

    def read_entries(self) -> Iterator[bytes]:
        for line in self.read_lines():
            yield line.removesuffix(b"\n")

    def has_checkpoint(self) -> bool:
        try:
            os.stat(CHECKPOINT, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def read_checkpoint(self) -> str:
        return self._read_note(CHECKPOINT, self._fd)

    def notes(self) -> list[tuple[Path, str]]:
        """Every checkpoints/SIZE.note, smallest size first, with its text."""
        names = self._note_names()
        for name in names:
            if not name.removesuffix(".note").isdecimal():
                raise VerificationError(
                    f"{self.history / name}: not a checkpoint file (checkpoints/SIZE.note)"
                )
        names.sort(key=lambda n: int(n.removesuffix(".note")))
        fd = self._require_history() if names else -1
        return [(self.history / n, self._read_note(n, fd)) for n in names]

    def _note_names(self) -> list[str]:
        if self._history_fd is None:
            return []
        return [n for n in os.listdir(self._history_fd) if n.endswith(".note")]

    def _read_note(self, name: str, dir_fd: int) -> str:
        """A note's text; undecodable bytes become lone surrogates, which the note
        parser refuses as invalid UTF-8 (instead of a UnicodeDecodeError)."""
        try:
            fd = self._open(name, _READ, dir_fd)
        except FileNotFoundError:
            raise VerificationError(f"{self._where(name, dir_fd)} does not exist") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_NOTE_BYTES + 1)
        if len(raw) > _MAX_NOTE_BYTES:
            raise VerificationError(
                f"{self._where(name, dir_fd)} is over {_MAX_NOTE_BYTES} bytes: not a checkpoint"
            )
        return raw.decode("utf-8", errors="surrogateescape")

    # -- writing (audit fetch) ---------------------------------------------------------

    @contextlib.contextmanager
    def appending(self) -> Iterator[BinaryIO]:
        """entries.jsonl opened to append (created if missing); synced on success."""
        self._require_writable()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
        try:
            with os.fdopen(self._open(ENTRIES, flags, self._fd), "ab") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise VerificationError(f"cannot write {self.entries}: {_why(e)}") from None

    def truncate_entries(self, length: int) -> None:
        """Cut entries.jsonl to `length` bytes (entries no checkpoint committed)."""
        self._require_writable()
        try:
            fd = self._open(ENTRIES, os.O_WRONLY | os.O_NONBLOCK, self._fd)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        except OSError as e:
            raise VerificationError(f"cannot write {self.entries}: {_why(e)}") from None
        finally:
            os.close(fd)

    def write_checkpoint(self, size: int, note: str) -> None:
        """checkpoints/SIZE.note, then checkpoint: the commit point of a fetch."""
        self._require_writable()
        self._replace(f"{size}.note", note.encode(), self._require_history())
        self._replace(CHECKPOINT, note.encode(), self._fd)

    def _replace(self, name: str, data: bytes, dir_fd: int) -> None:
        """Write `data` to a fresh exclusive name, sync it, rename it over `name`."""
        while True:
            tmp = f".{name}.{secrets.token_hex(8)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            try:
                fd = self._open(tmp, flags, dir_fd)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise VerificationError(
                f"cannot write {self._where(name, dir_fd)}: {_why(e)}"
            ) from None

    def _require_writable(self) -> None:
        if not self.writable:
            raise ValueError("this LogDir was opened read-only")
