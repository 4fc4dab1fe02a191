"""The run's log: console, history.json and TensorBoard scalars; SIGTERM handling."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tf_shopee.io_utils import write_json_atomic
from tf_shopee.training.workdir import HISTORY_FILE, TENSORBOARD_DIR, read_json


class StopRequest:
    """Turns SIGTERM (preemption, ``kill``) into a checkpoint at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        print("SIGTERM: saving a checkpoint and stopping", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def write_scalar(name: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without the tensorboard package (TF does not depend on it): the
    same tensor with the "scalars" plugin metadata, which TensorBoard reads as a scalar."""

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


class RunLog:
    """Console + history.json + TensorBoard; only the chief writes files."""

    def __init__(self, workdir: Path, chief: bool):
        self.workdir = workdir
        self.chief = chief
        self.history = read_json(workdir / HISTORY_FILE, None) or {"starts": [], "epochs": []}
        if chief:
            self.writer = tf.summary.create_file_writer(str(workdir / TENSORBOARD_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()

    def say(self, message: str) -> None:
        if self.chief:
            print(message, flush=True)

    def trim_to(self, completed_epochs: int) -> None:
        """Drop epoch records the restored checkpoint does not cover (killed after writing)."""
        self.history["epochs"] = [
            record for record in self.history["epochs"] if record["epoch"] <= completed_epochs
        ]

    def record_start(self, record: dict) -> None:
        self.history["starts"].append(record)
        self._save()

    def record_epoch(self, record: dict) -> None:
        self.history["epochs"] = [
            existing for existing in self.history["epochs"] if existing["epoch"] != record["epoch"]
        ] + [record]
        self._save()

        with self.writer.as_default():
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    write_scalar(key, value, record["epoch"])
            self.writer.flush()

    def _save(self) -> None:
        if self.chief:
            write_json_atomic(self.workdir / HISTORY_FILE, self.history)
