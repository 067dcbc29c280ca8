"""File helpers: atomic writes (artefacts appear whole or not at all) and image discovery."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeseg.errors import EdgesegError


def _read_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it process-wide, a race with
    other threads creating files): from /proc on Linux, else at import, while single-threaded."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a temp file of a process that is gone is a leftover)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def temp_tag() -> str:
    """The part of a temporary file's name that says which process wrote it."""
    return f"pid{os.getpid()}"


def remove_leftovers(folder: Path, pattern: str) -> list[Path]:
    """Delete files in ``folder`` matching the glob ``pattern`` whose name carries the
    :func:`temp_tag` of a process that is gone: what a crash left behind. Returns them."""
    removed = []
    for p in folder.glob(pattern):
        m = re.search(r"\.pid(\d+)\.", p.name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync directories
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temp file keeps the target's suffix, since writers such as cv2.VideoWriter and
    torch.onnx pick the format from it, and carries this process's id, so a later write into
    the folder removes what a crashed one left. ``durable``: the file's data and the rename are
    flushed to the disk before returning, so a power cut cannot leave an empty artefact under
    the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, f".{path.name}.*.tmp{path.suffix}")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{temp_tag()}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give the artefact the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        if durable:
            fsync_path(tmp_path)
        os.replace(tmp_path, path)
        if durable:
            fsync_path(path.parent, directory=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an image file by its extension (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_image(p) and p.is_file())


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (their images, sorted) or quoted globs."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += list_images(p)
        elif p.is_file():
            found.append(p)
        elif any(ch in item for ch in "*?["):
            found += sorted(Path(q) for q in glob.glob(item) if is_image(q))
        else:
            raise EdgesegError(
                f"input not found: {item}; pass image files, folders or quoted globs"
            )
    if not found:
        raise EdgesegError(
            f"no images found in {' '.join(inputs)} (looked for {', '.join(IMAGE_EXTS)})"
        )
    return found
