"""The run folder: its file names, resume checks, and reading/restoring what a run left there.

Workdir layout::

    config.json          the resolved RunConfig (written at the first start)
    run_state.json       label count, steps per epoch and other facts a resume must agree with
    history.json         one record per epoch (loss, accuracy, lr, throughput, validation F1) and
                         one per process start (where it resumed)
    vocabulary.txt       WordPiece vocabulary of a scratch text model (learned at the first start)
    checkpoints/         the latest training state (model, optimizers, counters)
    checkpoints/best/    the embedding model of the best validation epoch
    checkpoints/untrained/  the embedding model before training (a baseline to export)
    thresholds.json      the best epoch's threshold sweep
    untrained_thresholds.json  the same sweep for the untrained model
    tensorboard/         TensorBoard event files
    final_metrics.json   what train_and_evaluate returned
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tf_shopee.config import RunConfig
from tf_shopee.errors import UserError

# Settings a resumed run must share with the run that wrote the workdir: they change the
# variables in the checkpoint or the meaning of the validation split.
STRUCTURAL_KEYS = (
    "model.kind",
    "model.embedding_dim",
    "model.image.backbone",
    "model.image.pooling",
    "model.image.projection",
    "model.text.backbone",
    "model.text.vocabulary",
    "model.text.sequence_length",
    "model.text.lowercase",
    "model.text.vocabulary_size",
    "model.text.num_layers",
    "model.text.hidden_dim",
    "model.text.num_heads",
    "model.text.intermediate_dim",
    "data.image_size",
    "data.validation_fold",
    "data.holdout_folds",
)

CONFIG_FILE = "config.json"
RUN_STATE_FILE = "run_state.json"
HISTORY_FILE = "history.json"
VOCABULARY_FILE = "vocabulary.txt"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT_DIR = os.path.join("checkpoints", "best")
UNTRAINED_CHECKPOINT_DIR = os.path.join("checkpoints", "untrained")
THRESHOLDS_FILE = "thresholds.json"
UNTRAINED_THRESHOLDS_FILE = "untrained_thresholds.json"
TENSORBOARD_DIR = "tensorboard"
FINAL_METRICS_FILE = "final_metrics.json"
WORKER_TEMP_DIR = ".worker_temp"
# What --overwrite-workdir deletes: only files this module writes, never the whole folder.
WORKDIR_OUTPUTS = (
    CONFIG_FILE,
    RUN_STATE_FILE,
    HISTORY_FILE,
    VOCABULARY_FILE,
    CHECKPOINT_DIR,
    THRESHOLDS_FILE,
    UNTRAINED_THRESHOLDS_FILE,
    TENSORBOARD_DIR,
    FINAL_METRICS_FILE,
    WORKER_TEMP_DIR,
)


def get_path(config: RunConfig, dotted: str):
    """The value of a dotted config key, e.g. ``get_path(config, "model.kind")``."""
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def read_json(path: Path, default=None):
    """A JSON file of the workdir, ``default`` when missing; UserError when it is damaged."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid JSON ({error}); delete it or pass --overwrite-workdir"
        ) from None


def clear_workdir(workdir: Path) -> None:
    """Delete what a previous run wrote into ``workdir`` (only the files this module writes)."""
    for name in WORKDIR_OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_resumable(workdir: Path, config: RunConfig, num_classes: int) -> bool:
    """True when ``workdir`` holds a run to resume; UserError when it holds an incompatible one."""
    saved_path = workdir / CONFIG_FILE
    if not saved_path.is_file():
        return False
    saved = RunConfig.load(saved_path)
    kind = config.model.kind
    relevant = [
        key
        for key in STRUCTURAL_KEYS
        if not (key.startswith("model.image.") and not kind.uses_images)
        and not (key.startswith("model.text.") and not kind.uses_titles)
        and not (key == "data.image_size" and not kind.uses_images)
    ]
    differences = [
        f"{key}: {get_path(saved, key)!r} in the workdir, {get_path(config, key)!r} now"
        for key in relevant
        if get_path(saved, key) != get_path(config, key)
    ]
    if differences:
        raise UserError(
            f"{workdir} holds a different run ({'; '.join(differences)}): use another --workdir "
            "or pass --overwrite-workdir to delete that run and start over"
        )
    state = read_json(workdir / RUN_STATE_FILE, {}) or {}
    saved_classes = state.get("num_classes")
    if saved_classes is not None and saved_classes != num_classes:
        raise UserError(
            f"the data {config.data.tfrecords} has {num_classes} label groups but the model in "
            f"{workdir} was trained with {saved_classes}: its ArcFace head cannot be reused. Use "
            "another --workdir, or pass --overwrite-workdir to start over"
        )
    changed = [
        key
        for key, value in _flatten(config.to_dict()).items()
        if _flatten(saved.to_dict()).get(key) != value
    ]
    if changed:
        print(f"resuming {workdir} with changed settings: {', '.join(changed)}", file=sys.stderr)
    return True


def _flatten(payload: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def restore_checkpoint(checkpoint, path: str, what: str) -> None:
    """Restore a checkpoint; an unreadable or mismatching one is a UserError naming it."""

    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except Exception as error:  # a damaged file fails in many ways (OpError,
        # IndexError "Read less bytes than requested", DecodeError, AssertionError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"cannot restore the {what} checkpoint {path} (files {path}.index, "
            f"{path}.data-*): {first_line}. Delete it to fall back to an older one, or pass "
            "--overwrite-workdir to start the run over"
        ) from None


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tf_shopee_write_check."):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write to {what} {folder}: {error.strerror or error}; choose another folder "
            "or fix its permissions"
        ) from None


def _export_metadata(folder: Path) -> dict | None:
    from tf_shopee.export import METADATA_FILE

    try:
        return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_outputs(config: RunConfig, workdir: Path, exports: dict[str, Path]) -> None:
    """Refuse, before training, outputs that cannot be written or would destroy something.

    ``exports`` maps a name for messages (``--export``) to an export folder. The workdir and
    every export's parent folder must be writable; an export folder may replace only an empty
    folder or an earlier export of this same run (a default ``saved_models/<workdir name>`` of
    another run with the same workdir name is refused, not overwritten); no export may be the
    data or the workdir, or hold them.
    """
    from tf_shopee.export import METADATA_FILE
    from tf_shopee.io_utils import refuse_overwriting_inputs

    refuse_overwriting_inputs(
        {"--data": config.data.tfrecords, "--workdir": workdir}, {}, replaced_folders=exports
    )
    if config.data.tfrecords and os.path.realpath(workdir) == os.path.realpath(
        config.data.tfrecords
    ):
        raise UserError(f"--workdir {workdir} is the --data folder: give the run its own folder")
    _check_writable(workdir, "--workdir")
    for name, folder in exports.items():
        if folder.parent == workdir and folder.name in WORKDIR_OUTPUTS:
            raise UserError(f"{name} {folder} is a folder the run itself writes: choose another")
        _check_writable(folder.parent, f"the parent folder of {name}")
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise UserError(f"{name} {folder} exists and is not a folder")
        if not any(folder.iterdir()):
            continue
        if not (folder / METADATA_FILE).is_file():
            raise UserError(
                f"{name} {folder} exists and is not a tf_shopee export: choose another {name} "
                "folder"
            )
        metadata = _export_metadata(folder) or {}
        if metadata.get("workdir") != str(workdir):
            raise UserError(
                f"{name} {folder} holds the model of another run (run {metadata.get('run_name')!r}"
                f", workdir {metadata.get('workdir')}); it is not replaced: pass another --export "
                "folder, or delete that one first"
            )


def finished_run(workdir: Path, config: RunConfig, exports: dict[str, Path]) -> dict | None:
    """The final metrics of a run that already trained ``config.train.epochs`` epochs and whose
    exports are in place (after saying so), or None when there is something left to do."""
    import tensorflow as tf

    final = read_json(workdir / FINAL_METRICS_FILE, None)
    if not final or final.get("stopped_early") or (final.get("epochs") or 0) < config.train.epochs:
        return None
    # --epochs 0 exports the model as initialised.
    checkpoint_dirs = {
        "--export": UNTRAINED_CHECKPOINT_DIR if config.train.epochs == 0 else BEST_CHECKPOINT_DIR,
        "the untrained export": UNTRAINED_CHECKPOINT_DIR,
    }
    for name, folder in exports.items():
        metadata = _export_metadata(folder) or {}
        latest = tf.train.latest_checkpoint(str(workdir / checkpoint_dirs[name]))
        if metadata.get("workdir") != str(workdir) or metadata.get("checkpoint") != latest:
            return None  # trained, but this export is missing or older: export again
    best = final.get("best_f1")
    print(
        f"{workdir} holds a complete run: {final['epochs']} epochs"
        + (f", best validation F1 {best:.4f} (epoch {final.get('best_epoch')})" if best else "")
        + (f", exported to {final.get('export_dir')}" if exports else "")
        + f". Nothing to do: pass --epochs N (more than {config.train.epochs}) to train on, or "
        "--overwrite-workdir to start over.",
        flush=True,
    )
    return {**final, "already_complete": True}
