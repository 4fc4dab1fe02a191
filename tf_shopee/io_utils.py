"""Small file helpers shared by every stage: atomic writes and hashing.

Outputs are written to a temporary name in the destination folder and renamed into place, so an
interrupted job never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

TEMPORARY_SUFFIX = ".tmp"


def _current_umask() -> int:
    # Linux reports the umask without changing it; os.umask() would briefly set it process-wide,
    # racing with other threads that create files.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place when the block succeeds.

    The temporary file is removed if the block raises, so no partial output is ever left under the
    final name.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=TEMPORARY_SUFFIX, dir=destination.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        # mkstemp creates the file private (0600); give the result the permissions an ordinary
        # open() would, so outputs stay readable by the other users of a shared machine.
        if temporary.exists():
            os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, destination)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``destination`` atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(destination: str | os.PathLike, payload) -> None:
    """Write ``payload`` as indented JSON to ``destination`` atomically."""
    write_text_atomic(destination, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def replace_directory(temporary: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move the finished folder ``temporary`` to ``destination``, replacing a previous one.

    Two renames: the old folder stays whole under its name until the new one is complete, and
    is deleted only once the new one is in place.
    """
    temporary, destination = Path(temporary), Path(destination)
    if not destination.exists():
        os.replace(temporary, destination)
        return
    retired = destination.parent / f".{destination.name}.old-{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(destination, retired)
    os.replace(temporary, destination)
    shutil.rmtree(retired, ignore_errors=True)


def sha256_file(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()
