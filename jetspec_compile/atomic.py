"""Write a folder so that nothing is ever half-written or destroyed by accident.

``atomic_folder(dest)`` holds an exclusive lock next to ``dest`` for the whole write (a second writer to
the same ``dest`` fails at once), builds the folder under ``.NAME.partial-export-pidPID`` and renames it
into place with RENAME_NOREPLACE: an existing ``dest`` is replaced only with ``force``, even one created
while the folder was being written. Partial folders left by killed writers are removed by the next
writer of the same ``dest`` once their owning process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from jetspec_compile.errors import ArtifactError

_RENAME_NOREPLACE = 1
_SPECIAL = ("/proc", "/sys", "/dev")


def partial_name(dest: Path, kind: str = "partial", pid: int | None = None) -> str:
    return f".{dest.name}.{kind}-export-pid{os.getpid() if pid is None else pid}"


def check_out_folder(dest: Path) -> None:
    """``dest`` may be created: not under /proc, /sys or /dev, and its nearest existing parent is a
    writable folder."""
    resolved = dest.resolve()
    for special in map(Path, _SPECIAL):
        if resolved == special or special in resolved.parents:
            raise ArtifactError(f"{dest}: output folder is under {special}; expected a folder on a regular "
                                "file system")
    parent = resolved.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArtifactError(f"{dest}: cannot create the output folder: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"{dest}: cannot create the output folder: {parent} is not writable")


@contextlib.contextmanager
def atomic_folder(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty folder next to ``dest``; on success rename it to ``dest``, on any error delete it."""
    dest = Path(dest)
    check_out_folder(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"{dest}: cannot create the output folder ({e.strerror})") from None
    with _lock(dest):
        if _exists(dest) and not force:
            raise ArtifactError(f"{dest}: already exists (pass --force to replace it)")
        clean_stale(dest)
        tmp = dest.parent / partial_name(dest)
        shutil.rmtree(tmp, ignore_errors=True)  # ours by pid, from an earlier try in this process
        try:
            tmp.mkdir()
            yield tmp
            _install(tmp, dest, force)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and not isinstance(e, ArtifactError):
                raise _os_error(dest, e) from None
            raise


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def _os_error(dest: Path, e: OSError) -> ArtifactError:
    where = f" ({e.filename})" if e.filename else ""
    return ArtifactError(f"{dest}: writing the artifact failed: {e.strerror or e}{where}; nothing was left behind")


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """An flock on ``.NAME.export-lock`` (released by the kernel if the process dies), unlinked at the end."""
    path = dest.parent / f".{dest.name}.export-lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArtifactError(f"{dest}: cannot create the lock file {path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ArtifactError(f"{dest}: another export (pid {owner}) is writing this folder right now "
                                f"(lock {path}); wait for it or pick another --out") from None
        if _same_file(fd, path):  # not a lock file that its holder unlinked meanwhile
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def clean_stale(dest: Path) -> list[Path]:
    """Remove ``.NAME.partial-export-pidN`` / ``.NAME.old-export-pidN`` folders whose process is gone."""
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(partial|old)-export-pid(\d+)$")
    removed = []
    for p in dest.parent.iterdir():
        match = pattern.match(p.name)
        if match and int(match.group(2)) != os.getpid() and not pid_alive(int(match.group(2))):
            remove(p)
            removed.append(p)
    return removed


def remove(p: Path) -> None:
    """Delete a folder tree, a file or a symlink (never what a symlink points to); quiet if absent."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _install(tmp: Path, dest: Path, force: bool) -> None:
    if force and _exists(dest):
        old = dest.parent / partial_name(dest, "old")
        remove(old)
        rename_noreplace(dest, old)
        rename_noreplace(tmp, dest)
        remove(old)
        return
    try:
        rename_noreplace(tmp, dest)
    except FileExistsError:
        raise ArtifactError(f"{dest}: was created by someone else while exporting; it was not replaced (pass "
                            "--force to replace it) and the new artifact was discarded") from None


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``dst`` (Linux renameat2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        at_fdcwd = -100
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(dst))
    if _exists(dst):  # no renameat2 here: the lock still keeps other exports out
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
