"""TensorFlow's start-up and runtime chatter stays out of the commands' output, unless asked."""

import logging
import os
import subprocess
import sys

import pytest

from tf_shopee import _is_start_up_chatter

# What every command printed on a CPU machine before: the start-up lines (twice), then the
# runtime's error line about CUDA when the devices are listed, and absl's INFO lines through
# the root logger the commands configure at INFO. Prints the levels of TensorFlow's and absl's
# Python loggers.
IMPORT_AND_LIST_DEVICES = (
    "import logging, tf_shopee; tf = tf_shopee.import_tensorflow(); "
    "tf.config.list_physical_devices(); "
    "print(logging.getLogger('tensorflow').level, logging.getLogger('absl').level)"
)


def _run_a_fresh_process(**environment) -> tuple[str, str]:
    """(stdout, stderr) of a fresh interpreter importing TensorFlow as the commands do."""
    clean = {key: value for key, value in os.environ.items()
             if key not in ("TF_CPP_MIN_LOG_LEVEL", "TF_SHOPEE_VERBOSE")}
    finished = subprocess.run([sys.executable, "-c", IMPORT_AND_LIST_DEVICES],
                              env={**clean, **environment}, capture_output=True, text=True,
                              timeout=300, check=True)
    return finished.stdout, finished.stderr


@pytest.mark.parametrize("line, chatter", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
     True),
    ("I0000 00:00:1796459522.888029    6681 port.cc:153] oneDNN custom operations are on.\n", True),
    ("W0000 00:00:1796459555.686099    6919 dataset.cc:997] Input of GeneratorDatasetOp\n", True),
    ("E0000 00:00:1796459537.193549    6919 cuda_platform.cc:52] failed call to cuInit\n", False),
    ("I wrote 3 rows\n", False),
    ("UserWarning: something of ours\n", False),
])
def test_only_the_runtimes_information_and_warning_lines_are_chatter(line, chatter):
    assert _is_start_up_chatter(line) is chatter


def test_a_command_prints_none_of_tensorflows_chatter_by_default():
    stdout, stderr = _run_a_fresh_process()
    assert "absl::InitializeLog" not in stderr
    assert "oneDNN custom operations" not in stderr
    assert "cuInit" not in stderr
    assert stdout.split() == [str(logging.WARNING)] * 2  # their INFO lines are dropped


def test_tf_shopee_verbose_brings_tensorflows_lines_back():
    stdout, stderr = _run_a_fresh_process(TF_SHOPEE_VERBOSE="1")
    assert "oneDNN custom operations" in stderr
    # Still once each, not twice (TensorFlow writes its start-up lines from two libraries).
    assert stderr.count("oneDNN custom operations") == 1
    assert stdout.split() == [str(logging.NOTSET)] * 2  # both loggers left as they were
