"""The catalogue index's writer lock: one writer at a time, and the repair of what killed writers
left behind.

Writers (``catalog build``, ``catalog add``) hold ``fcntl.flock`` on ``.INDEX.lock`` beside the
index from before they read it until their new version is in place; readers take no lock, but a
reader that finds a swap abandoned by a killed writer takes the lock briefly to repair it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from tf_shopee.errors import UserError
from tf_shopee.io_utils import exclusive_lock, recover_directory_swap

logger = logging.getLogger("tf_shopee.catalog")

_LOCK_SUFFIX = ".lock"


def lock_path(index_dir: str | os.PathLike) -> Path:
    """The writers' lock file of an index: ``.INDEX.lock`` beside it."""
    index_dir = Path(index_dir)
    return index_dir.parent / f".{index_dir.name}{_LOCK_SUFFIX}"


@contextlib.contextmanager
def writer_lock(index_dir: str | os.PathLike, *, wait: bool = True, quiet: bool = False):
    """Hold the index's writer lock (module docstring) and repair what killed writers left.

    Raises:
        UserError: the folder beside the index is not writable (said before any work), or
            another writer holds the lock and ``wait`` is False.
    """
    index_dir = Path(index_dir)
    parent = index_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {parent} for the catalogue index ({error.strerror}): "
                        "choose a folder you can write") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{parent} is not writable: the catalogue index {index_dir.name} is "
                        "written there (its new version, the swap and the lock file): choose a "
                        "writable folder")
    with exclusive_lock(lock_path(index_dir), wait=wait,
                        what=f"the catalogue index {index_dir}"):
        for action in recover_directory_swap(index_dir):
            if not quiet:
                logger.warning("%s", action)
        yield
