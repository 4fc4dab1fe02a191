"""Small file helpers shared by every stage: atomic writes and hashing.

Outputs are written to a temporary name in the destination folder and renamed into place, so an
interrupted job never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping

from tf_shopee.errors import UserError

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


def read_json(path: str | os.PathLike):
    """The JSON document in ``path``; UserError naming the file when it is not valid JSON (the
    manifests, metadata and indexes the project writes, read back)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None


def replace_directory(temporary: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move the finished folder ``temporary`` to ``destination``, replacing a previous one.

    Two renames: the previous folder is first renamed to ``.NAME.old-PID``, then ``temporary``
    (by convention ``.NAME.partial-PID``) to ``NAME``; the retired folder is deleted last. A
    process killed between the renames leaves no ``NAME``: :func:`recover_directory_swap`, which
    every call runs first (and readers may run), puts the previous folder back and removes what
    dead processes left behind.
    """
    temporary, destination = Path(temporary), Path(destination)
    recover_directory_swap(destination)
    if not destination.exists():
        os.replace(temporary, destination)
        return
    retired = destination.parent / f".{destination.name}{RETIRED_MARK}{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(destination, retired)
    os.replace(temporary, destination)
    shutil.rmtree(retired, ignore_errors=True)


# Name marks of replace_directory's hidden siblings: ".NAME.partial-PID" (a folder being written)
# and ".NAME.old-PID" (the previous folder, retired during the swap).
PARTIAL_MARK = ".partial-"
RETIRED_MARK = ".old-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _dead_writer_leftovers(destination: Path, mark: str) -> list[Path]:
    """``.NAME<mark>PID`` siblings of ``destination`` whose process is gone."""
    leftovers = []
    for path in sorted(destination.parent.glob(f".{destination.name}{mark}*")):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            leftovers.append(path)
    return leftovers


def recover_directory_swap(destination: str | os.PathLike) -> list[str]:
    """Finish what a process killed inside :func:`replace_directory` left, and say what was done.

    * ``NAME`` missing and a dead process's ``.NAME.old-PID`` present: the kill came between the
      two renames. The swap is rolled back (the retired folder becomes ``NAME`` again): the
      killed command never reported success, so the previous version stands.
    * ``NAME`` present and a dead process's ``.NAME.old-PID`` present: the kill came after the
      swap; the retired copy is deleted.
    * A dead process's ``.NAME.partial-PID``: an unfinished write; deleted.

    Folders of live processes are never touched (a writer may be at work). Writers call this
    under their lock; a reader may call it too: the renames are atomic and only dead processes'
    folders move.

    Returns:
        One line per action, for the log.
    """
    destination = Path(destination)
    actions = []
    if not destination.parent.is_dir():
        return actions
    for retired in _dead_writer_leftovers(destination, RETIRED_MARK):
        if not destination.exists():
            try:
                os.replace(retired, destination)
            except OSError:
                continue  # another process restored it first
            actions.append(f"restored {destination} from {retired.name}, left by a run killed "
                           "while swapping in a new version")
        else:
            shutil.rmtree(retired, ignore_errors=True)
            actions.append(f"removed {retired.name}, the previous version a killed run left")
    for partial in _dead_writer_leftovers(destination, PARTIAL_MARK):
        shutil.rmtree(partial, ignore_errors=True)
        actions.append(f"removed {partial.name}, left unfinished by a killed run")
    return actions


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, *, wait: bool = True,
                   what: str = "this folder") -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created when missing) for the block.

    The holder's pid and start time are written into the file, so a second process can say who
    it waits for. The lock goes with the process: a killed holder releases it.

    Args:
        lock_path: the lock file (beside what it protects).
        wait: wait for the holder to finish; False raises at once.
        what: what the lock protects, for the messages.

    Raises:
        UserError: the lock file cannot be created (read-only folder), or ``wait`` is False and
            another process holds the lock.
    """
    lock_path = Path(lock_path)
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise UserError(
            f"cannot write in {lock_path.parent} ({error.strerror}): {what} needs a writable "
            "folder (its lock file, the new version and the swap all go there)"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "?"
            if not wait:
                raise UserError(
                    f"another process ({holder}) is writing {what}: try again when it is done, "
                    "or leave out --no-wait to wait for it"
                ) from None
            print(f"waiting for another process ({holder}) that is writing {what} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode(),
                  0)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def sha256_file(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


def refuse_overwriting_inputs(
    inputs: Mapping[str, str | os.PathLike | None],
    outputs: Mapping[str, str | os.PathLike | None],
    *,
    replaced_folders: Mapping[str, str | os.PathLike | None] | None = None,
) -> None:
    """Refuse, before any work starts, a command whose outputs would overwrite its inputs.

    Args:
        inputs: option name (e.g. ``"--csv"``) → an input file or folder (None: not given).
        outputs: option name → a file the job writes (None: not written).
        replaced_folders: option name → a folder the job replaces as a whole (an export).

    An output file may not be an input file, nor an existing file inside an input folder (an
    image, a shard, a model file). A replaced folder may not be an input, nor hold an input or
    another output. Two outputs may not be the same path. Paths are compared after resolving
    symlinks.

    Raises:
        UserError: naming both options.
    """
    replaced_folders = replaced_folders or {}

    def resolved(items):
        return {name: os.path.realpath(path) for name, path in items.items() if path}

    input_paths = resolved(inputs)
    output_paths = resolved(outputs)
    folder_paths = resolved(replaced_folders)
    for name, path in {**output_paths, **folder_paths}.items():
        is_file_output = name in output_paths
        for input_name, input_path in input_paths.items():
            if path == input_path:
                raise UserError(
                    f"{name} {path} is the {input_name} input: an output must never overwrite "
                    "an input; choose another path"
                )
            if (
                is_file_output
                and os.path.isdir(input_path)
                and _inside(path, input_path)
                and os.path.exists(path)
            ):
                raise UserError(
                    f"{name} {path} would overwrite a file inside the {input_name} folder "
                    f"{input_path}; choose another path"
                )
    seen: dict[str, str] = {}
    for name, path in output_paths.items():
        if path in seen:
            raise UserError(f"{seen[path]} and {name} are the same file {path}: give two paths")
        seen[path] = name
    for name, folder in folder_paths.items():
        held = {**input_paths, **{key: value for key, value in output_paths.items()}}
        for other_name, other in held.items():
            if other_name != name and (other == folder or _inside(other, folder)):
                raise UserError(
                    f"{name} {folder} is replaced as a whole, but it holds {other_name} "
                    f"{other}; choose another {name}"
                )


def relative_paths(payload, root: str | os.PathLike):
    """``payload`` (JSON-ready data) with absolute paths under ``root`` or its parent folder
    written relative to ``root``: ``/home/me/tf_shopee/x`` → ``x``, ``/home/me/shared/d`` →
    ``../shared/d``, also inside longer strings such as recorded commands.

    Results files keep no machine's folder layout, yet still say which data they came from.
    """
    root = os.path.realpath(root)
    parent = os.path.dirname(root)

    def convert(value):
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        if isinstance(value, str):
            if value == root:
                return "."
            return value.replace(root + os.sep, "").replace(parent + os.sep, ".." + os.sep)
        return value

    return convert(payload)
