"""`FileStore`: objects as files under a directory shared by the processes of one machine.

Layout: key `a/b/c` is the file `<root>/a/b/c@`. Every segment is percent-encoded
(`urllib.parse.quote(seg, safe='')`, which never emits '@', plus a leading '.' as '%2E' so only
temporary files start with '.'), so the '@' suffix tells objects
from folders: the keys `a` and `a/b` can coexist as the file `a@` and the folder `a/`, as they
can on S3.

Writes are atomic: the bytes go to a temporary file in the target folder, which is then renamed
over the final name (`os.replace`, atomic on POSIX), so a reader sees the old object, the new
one or nothing, never half a file. A conditional write (`put_if_absent`) hard-links the complete
temporary file to the final name instead: `os.link` fails if the name exists, atomically, and
the object appears whole or not at all. Empty folders are removed after a delete so that a long job
does not leave a tree of empty folders behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from transports.retry import Backoff, RetryPolicy
from transports.store import KeyNotFound, ObjectStore, StoreError

__all__ = ["FileStore"]

_OBJECT_SUFFIX = "@"
_TMP_PREFIX = ".tmp-"


def _encode(segment: str) -> str:
    """Percent-encodes a key segment into a file name that never starts with '.'."""
    name = quote(segment, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


class FileStore(ObjectStore):
    """A store in a local directory, shared by every process that opens the same `root`.

    Args:
      root: the directory; created if missing.
      poll, retry: see `ObjectStore`.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as root:
      ...     store = FileStore(root)
      ...     store.put("jobs/1/a", b"x"); store.put("jobs/1/a/b", b"y")
      ...     store.list("jobs/1/a")
      ['jobs/1/a', 'jobs/1/a/b']
    """

    def __init__(self, root: str | os.PathLike[str], *, poll: Backoff | None = None,
                 retry: RetryPolicy | None = None) -> None:
        super().__init__(poll=poll, retry=retry)
        self.root: str = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        *folders, name = key.split("/")
        return os.path.join(self.root, *(_encode(f) for f in folders),
                            _encode(name) + _OBJECT_SUFFIX)

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._publish(key, data, os.replace)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        # os.link is atomic and, unlike rename, refuses an existing name.
        return self._publish(key, data, os.link)

    def _publish(self, key: str, data: bytes | memoryview,
                 place: Callable[[str, str], None]) -> bool:
        """Writes `data` to a temporary file, then `place`s it at the key's path (atomically).

        Returns False if `place` found the key already there. A concurrent delete may prune the
        key's folder (or a parent) at any moment, so both steps are retried a few times.
        """
        path = self._path(key)
        folder = os.path.dirname(path)
        for _ in range(5):
            tmp = os.path.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}")
            try:
                os.makedirs(folder, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                place(tmp, path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                    raise StoreError(
                        f"file store {self.root}: cannot write key {key!r} ({err.strerror}); "
                        "free disk space or fix the folder's permissions, or choose another "
                        "--store") from err
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        raise OSError(f"could not write key {key!r} under {self.root}: its folder kept vanishing")

    def _get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(key) from None

    def _exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        folder = os.path.dirname(path)
        while folder != self.root and folder.startswith(self.root):
            try:
                os.rmdir(folder)  # fails harmlessly if not empty
            except OSError:
                return
            folder = os.path.dirname(folder)

    def _list(self, prefix: str) -> tuple[list[str], int]:
        *folders, partial = prefix.split("/")
        base = os.path.join(self.root, *(_encode(f) for f in folders))
        key_base = "".join(f + "/" for f in folders)
        keys: list[str] = []
        self._walk(base, key_base, partial, keys)
        keys.sort()
        return keys, -(-len(keys) // 1000)

    def _walk(self, folder: str, key_base: str, partial: str, out: list[str]) -> None:
        """Appends to `out` the keys under `folder` whose next segment starts with `partial`."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX):
                continue
            if entry.name.endswith(_OBJECT_SUFFIX):
                name = unquote(entry.name[:-len(_OBJECT_SUFFIX)])
                if name.startswith(partial):
                    out.append(key_base + name)
            else:
                name = unquote(entry.name)
                if name.startswith(partial):  # then every key below the folder matches
                    self._walk(entry.path, key_base + name + "/", "", out)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "file", "root": self.root, "poll": self.poll.to_dict(),
                "retry": self.retry.to_dict()}
