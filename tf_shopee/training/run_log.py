"""The run's log: console, history.json and TensorBoard scalars; SIGTERM handling."""

from __future__ import annotations

import signal
import sys
import time
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


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: how long, for ETAs."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Throttled progress lines for a long loop: done/total, rate, ETA (and any extra text).

    ``update`` prints at most every ``every_seconds`` (0: every update); the rate and ETA come
    from the updates of this process only, so a resumed epoch does not claim the skipped
    steps as speed.
    """

    def __init__(self, say, label: str, total: int, unit: str, every_seconds: float,
                 *, done: int = 0, unit_scale: int = 1, clock=time.monotonic):
        self.say = say
        self.label = label
        self.total = total
        self.unit = unit
        self.every_seconds = every_seconds
        self.unit_scale = unit_scale  # e.g. examples per step, for the rate
        self.clock = clock
        self.start_done = done
        self.started = clock()
        self.last_said = self.started

    def restart(self, done: int) -> None:
        """Measure the rate from here on (e.g. after a first call that only traced)."""
        self.start_done = done
        self.started = self.clock()

    def update(self, done: int, extra: str = "", *, force: bool = False) -> bool:
        """Report ``done`` of ``total`` when the interval has passed (or ``force``); return
        whether a line was printed."""
        now = self.clock()
        if not force and now - self.last_said < self.every_seconds:
            return False
        self.last_said = now
        elapsed = now - self.started
        new = done - self.start_done
        rate = new / elapsed if elapsed > 0 and new > 0 else 0.0
        speed = ""
        if rate:  # unknown until something was done since the (re)start
            speed = (f", {rate * self.unit_scale:.1f} {self.unit}/s, "
                     f"ETA {format_duration((self.total - done) / rate)}")
        percent = 100.0 * done / self.total if self.total else 100.0
        self.say(f"{self.label} {done}/{self.total} ({percent:.0f}%){extra}{speed}")
        return True
