"""File helpers: atomic writes (artefacts appear whole or not at all) and image discovery."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeseg.errors import EdgesegError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temp file keeps the target's suffix, since writers such as cv2.VideoWriter and
    torch.onnx pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give the artefact the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
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
