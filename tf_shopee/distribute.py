"""Choosing the ``tf.distribute`` strategy: one function, explicit names, no silent fallbacks.

:func:`get_strategy` maps a name from the command line (``--strategy``) to a strategy:

============  ==================================================================================
name          strategy
============  ==================================================================================
one_device    ``OneDeviceStrategy`` on the first GPU, else the CPU
mirrored      ``MirroredStrategy`` over all local GPUs; without GPUs, over all logical CPU
              devices (see :func:`split_cpu_into_logical_devices`)
multi_worker  ``MultiWorkerMirroredStrategy``; the cluster comes from the ``TF_CONFIG`` variable
tpu           ``TPUStrategy`` through ``TPUClusterResolver`` (``--tpu`` address, ``TPU_NAME``, or
              ``local`` on a TPU VM)
auto          tpu when a TPU is named (``--tpu``, ``TPU_NAME``) or this is a TPU VM
              (``/dev/accel0``); multi_worker when ``TF_CONFIG`` names more than one task;
              mirrored for several GPUs (or several logical CPUs); one_device otherwise, with a loud
              warning when that device is the CPU
============  ==================================================================================

A TPU or cluster that cannot be reached is an error (Model Garden ``distribute_utils``): falling
back to the CPU silently would turn a one-hour TPU job into a week-long CPU job.
"""

from __future__ import annotations

import json
import os
import sys

from tf_shopee.errors import UserError

STRATEGY_NAMES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")

# Device files of a Cloud TPU VM (the TPU chips are local PCI devices there).
TPU_VM_DEVICE = "/dev/accel0"


def split_cpu_into_logical_devices(count: int) -> None:
    """Split the first physical CPU into ``count`` logical devices.

    Lets ``MirroredStrategy`` run several replicas on a machine without GPUs (tests, demos). Must
    run before TensorFlow initialises its devices, i.e. before any op or strategy is created.
    """
    import tensorflow as tf

    if count < 1:
        raise UserError(f"the number of logical CPU devices must be at least 1, got {count}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) == count:
            return  # already split the same way: nothing to do
        raise RuntimeError(
            "split_cpu_into_logical_devices must run before TensorFlow initialises its devices "
            f"(before any tensor or strategy is created): {error}"
        ) from None


def get_strategy(name: str, *, tpu_address: str = ""):
    """Return the ``tf.distribute.Strategy`` called ``name`` (one of :data:`STRATEGY_NAMES`).

    Args:
        name: auto | one_device | mirrored | multi_worker | tpu.
        tpu_address: the TPU to use with ``tpu`` (a name, ``grpc://host:port`` or ``local``); with
            ``auto``, giving it selects the TPU.

    Raises:
        UserError: unknown name, a missing or invalid ``TF_CONFIG`` for multi_worker, or a TPU that
            cannot be found or initialised.
    """
    import tensorflow as tf

    if name not in STRATEGY_NAMES:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}")
    if name == "auto":
        name = _auto_strategy_name(tpu_address)
        print(f"strategy auto -> {name}", file=sys.stderr)
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    if name == "multi_worker":
        _read_tf_config(required=True)
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        if len(cpus) == 1:
            _warn_cpu_training("mirrored strategy with a single CPU replica")
        # Logical CPU devices share one memory: reducing on one of them is cheap, and unlike
        # the default collective ops it does not clash with the collective keys of an earlier
        # MirroredStrategy in the same process ("Shape mismatch in the collective instance").
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    # one_device
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    _warn_cpu_training("one_device strategy on the CPU")
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def _auto_strategy_name(tpu_address: str) -> str:
    import tensorflow as tf

    if tpu_address or os.environ.get("TPU_NAME") or os.path.exists(TPU_VM_DEVICE):
        return "tpu"
    cluster = _read_tf_config(required=False)
    if cluster is not None and _cluster_size(cluster) > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    if not tf.config.list_logical_devices("GPU") and len(tf.config.list_logical_devices("CPU")) > 1:
        return "mirrored"
    return "one_device"


def _cluster_size(tf_config: dict) -> int:
    return sum(len(tasks) for tasks in tf_config.get("cluster", {}).values())


def _read_tf_config(*, required: bool) -> dict | None:
    """Parse and check ``TF_CONFIG``; ``None`` when absent and not required."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        if required:
            raise UserError(
                "strategy multi_worker needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(tf_config, dict):
        raise UserError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster = tf_config.get("cluster")
    task = tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError("TF_CONFIG has no 'cluster' object listing the workers")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError("TF_CONFIG has no 'task' object with 'type' and 'index'")
    task_type, task_index = task["type"], task["index"]
    if task_type not in cluster:
        raise UserError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster {sorted(cluster)}"
        )
    if not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise UserError(
            f"TF_CONFIG task index {task_index!r} is out of range for the "
            f"{len(cluster[task_type])} {task_type!r} task(s)"
        )
    return tf_config


def _tpu_strategy(tpu_address: str):
    import tensorflow as tf

    address = tpu_address or os.environ.get("TPU_NAME", "")
    if not address and os.path.exists(TPU_VM_DEVICE):
        address = "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or None)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        where = address or "(none given: pass --tpu ADDRESS or set TPU_NAME)"
        raise UserError(f"cannot use the TPU {where}: {error}") from None
    return tf.distribute.TPUStrategy(resolver)


# The CPU-training banner is shown once per process: a process that builds several strategies
# (the demo trains three models) would otherwise repeat it for each.
_cpu_training_announced = False


def expect_cpu_training() -> None:
    """Declare that this process trains on the CPU on purpose: no CPU-training banner.

    The demo calls it (it is sized for a CPU and says so itself, once, in plain words).
    """
    global _cpu_training_announced
    _cpu_training_announced = True


def _warn_cpu_training(what: str) -> None:
    global _cpu_training_announced
    if _cpu_training_announced:
        return
    _cpu_training_announced = True
    banner = "!" * 78
    print(
        f"{banner}\nWARNING: no GPU or TPU found: training runs on the CPU ({what}).\n"
        "That is only fit for smoke tests (--tiny); real training needs a GPU or TPU.\n"
        f"{banner}",
        file=sys.stderr,
    )


def device_kind(strategy) -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: where the strategy's replicas compute."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    devices = " ".join(strategy.extended.worker_devices).upper()
    return "gpu" if "GPU" in devices else "cpu"


def mixed_precision_policy_name(strategy) -> str:
    """The Keras mixed-precision policy for ``strategy``'s devices.

    bfloat16 on TPUs and CPUs (same exponent range as float32: no loss scaling needed), float16
    on GPUs (their fast path; needs loss scaling).
    """
    return "mixed_float16" if device_kind(strategy) == "gpu" else "mixed_bfloat16"


def is_multi_worker(strategy) -> bool:
    """True for a strategy spanning several worker processes."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy.extended._in_multi_worker_mode()  # no public accessor
    return False


def task_identity(strategy) -> tuple[str, int]:
    """``(task_type, task_id)`` of this process; ``("chief", 0)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return "chief", 0
    return resolver.task_type or "worker", int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """True when this process writes the run's outputs (the chief, or worker 0 without a chief)."""
    if not is_multi_worker(strategy):
        return True
    task_type, task_id = task_identity(strategy)
    if task_type == "chief":
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def barrier(strategy) -> None:
    """Wait until every worker reaches this point (an all-reduce); no-op in a single process."""
    import tensorflow as tf

    if not is_multi_worker(strategy):
        return
    ones = strategy.run(lambda: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)
