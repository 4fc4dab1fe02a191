"""Strategy selection: explicit names, clear errors, logical CPU devices for mirrored tests."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tf_shopee import distribute
from tf_shopee.errors import UserError


def test_unknown_strategy_name_lists_the_choices():
    with pytest.raises(UserError) as raised:
        distribute.get_strategy("gpu")
    message = str(raised.value)
    assert "'gpu'" in message
    for name in distribute.STRATEGY_NAMES:
        assert name in message


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
        (json.dumps({"cluster": {"worker": ["localhost:1"]}}), "no 'task'"),
        (
            json.dumps(
                {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}
            ),
            "task type 'ps'",
        ),
        (
            json.dumps(
                {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}
            ),
            "out of range",
        ),
    ],
)
def test_invalid_tf_config_is_refused_before_any_connection(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        distribute.get_strategy("multi_worker")


def test_auto_prefers_an_explicit_tpu_then_a_cluster(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert distribute._auto_strategy_name("grpc://10.0.0.2:8470") == "tpu"
    cluster = {
        "cluster": {"worker": ["localhost:1", "localhost:2"]},
        "task": {"type": "worker", "index": 1},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    if not os.path.exists(distribute.TPU_VM_DEVICE):
        assert distribute._auto_strategy_name("") == "multi_worker"


def test_one_device_strategy_outside_a_cluster_is_the_chief(capsys, monkeypatch):
    # The banner shows once per process: as if no earlier test in this process had trained.
    monkeypatch.setattr(distribute, "_cpu_training_announced", False)
    strategy = distribute.get_strategy("one_device")
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy)
    assert distribute.task_identity(strategy) == ("chief", 0)
    distribute.barrier(strategy)  # a no-op in a single process
    if distribute.device_kind(strategy) == "cpu":
        assert "training runs on the CPU" in capsys.readouterr().err
        assert distribute.mixed_precision_policy_name(strategy) == "mixed_bfloat16"


def test_mirrored_over_logical_cpu_devices_in_a_fresh_process():
    # The split must happen before TensorFlow initialises its devices: a fresh interpreter.
    script = textwrap.dedent(
        """
        import tf_shopee
        from tf_shopee import distribute
        distribute.split_cpu_into_logical_devices(2)
        distribute.split_cpu_into_logical_devices(2)  # the same split again is harmless
        strategy = distribute.get_strategy("mirrored")
        print("replicas", strategy.num_replicas_in_sync, distribute.device_kind(strategy))
        print("auto", type(distribute.get_strategy("auto")).__name__)
        try:
            distribute.split_cpu_into_logical_devices(3)
        except RuntimeError as error:
            print("late split refused", "before TensorFlow initialises" in str(error))
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    environment.pop("TPU_NAME", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "replicas 2 cpu" in result.stdout
    if not os.path.exists(distribute.TPU_VM_DEVICE):
        assert "auto MirroredStrategy" in result.stdout
    assert "late split refused True" in result.stdout


def _cpu_banners(text: str) -> int:
    return text.count("only fit for smoke tests")


def test_the_cpu_training_banner_is_shown_once_per_process(monkeypatch, capsys):
    """The demo trains three models in one process: the banner came three times."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is present: no CPU-training banner to count")
    monkeypatch.setattr(distribute, "_cpu_training_announced", False)
    distribute.get_strategy("one_device")
    distribute.get_strategy("one_device")
    assert _cpu_banners(capsys.readouterr().err) == 1


def test_a_process_that_expects_cpu_training_gets_no_banner(monkeypatch, capsys):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is present: no CPU-training banner to count")
    monkeypatch.setattr(distribute, "_cpu_training_announced", False)
    distribute.expect_cpu_training()
    distribute.get_strategy("one_device")
    assert _cpu_banners(capsys.readouterr().err) == 0
