"""The project's own Beam ``ModelHandler``: an exported SavedModel called through its serving
signature, on whole shards of postings.

Beam's ``TFModelHandlerTensor`` cannot load our exports (it needs ``tensorflow_hub`` and then
``tf.keras.models.load_model``, which Keras 3 refuses for a SavedModel). This handler loads with
:func:`tf_shopee.export.load_exported` (``tf.saved_model.load`` + ``serving_default``) and embeds
with :func:`tf_shopee.matching.embedding.embed_postings`, predict.py's own embedding function:
the same photo checks (:func:`tf_shopee.data.convert.image_problem`), the same per-photo retry
when TensorFlow cannot decode one, the same batches. RunInference shares one loaded model per
worker process and reports its metrics.

One RunInference element is one shard (:class:`tf_shopee.beam.pipeline.ShardInput`): batching
is ours, not Beam's (``max_batch_size=1``, as Beam's documentation advises for custom batching),
so that a shard starting at a multiple of the batch size is embedded in exactly the batches
predict.py makes, and a shard written again after a kill is byte for byte the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tf_shopee.matching.embedding import embed_postings
from tf_shopee.matching.postings import Postings
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.beam")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL of a Beam filesystem (gs://, s3://, hdfs://, ...)."""
    return "://" in str(path)


def local_model_directory(model_dir: str) -> str:
    """``model_dir`` itself when it is a local folder; otherwise (gs://, s3://, ...) a copy of
    the export in a local temporary folder, made once per process through Beam's filesystems
    (TensorFlow and the fingerprint read local files)."""
    if not is_remote(model_dir):
        return model_dir
    cached = _REMOTE_COPIES.get(model_dir)
    if cached is not None:
        return cached
    root = model_dir.rstrip("/")
    target = Path(tempfile.mkdtemp(prefix="tf_shopee_model_"))
    matched = FileSystems.match([root + "/**"])[0].metadata_list
    for metadata in matched:
        relative = metadata.path[len(root) + 1:]
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(metadata.path) as source, open(destination, "wb") as sink:
            shutil.copyfileobj(source, sink)
    _REMOTE_COPIES[model_dir] = str(target)
    return str(target)


_REMOTE_COPIES: dict[str, str] = {}


class SavedModelHandler(ModelHandler):
    """RunInference over shards with one exported model.

    Args:
        model_dir: the export folder (local, or a Beam filesystem URL the workers can read).
        source: the model's source name (``image``, ``text``, ``kind:folder``).
        kind: the model's kind (from its export metadata).
        batch_size: postings per model call.
        threads: TensorFlow intra-op threads per worker process (0: TensorFlow's default, one
            per core). With several worker processes on one machine, cores / processes keeps
            them from fighting over the same cores.
    """

    def __init__(self, model_dir: str, *, source: str, kind: str, batch_size: int,
                 threads: int = 0):
        super().__init__()
        self.model_dir = model_dir
        self.source = source
        self.kind = ModelKind(kind)
        self.batch_size = int(batch_size)
        self.threads = int(threads)

    def load_model(self):
        """The export loaded with ``tf.saved_model.load`` and its serving signature."""
        import tensorflow as tf

        from tf_shopee.export import load_exported

        if self.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.threads)
            except RuntimeError:  # already initialised by a model loaded before in this process
                pass
        return load_exported(local_model_directory(self.model_dir))

    def run_inference(self, batch, model, inference_args=None):
        """Embed each shard of ``batch`` (one, with ``max_batch_size=1``); yields a
        ``PredictionResult`` per shard whose inference is ``(embeddings, bad photos)``:
        (rows, dim) float32 (zeros where a photo cannot be used) and row → reason."""
        for shard in batch:
            postings = shard_postings(shard, self.kind)
            embeddings = embed_postings(model, postings, batch_size=self.batch_size,
                                        progress=False)
            bad = dict(postings.bad_images) if self.kind.uses_images else {}
            yield PredictionResult(shard, (embeddings, bad), model_id=self.source)

    def batch_elements_kwargs(self):
        # One shard per call: the batches inside a shard are ours (see the module docstring).
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_num_bytes(self, batch) -> int:
        return sum(shard.num_bytes() for shard in batch)

    def get_metrics_namespace(self) -> str:
        return f"tf_shopee_{self.source.replace(':', '_')}"

    def share_model_across_processes(self) -> bool:
        return False


def shard_postings(shard, kind: ModelKind) -> Postings:
    """The :class:`Postings` of a shard as :func:`embed_postings` takes them: titles, the photo
    bytes read by the pipeline, and the rows already known to have no usable photo."""
    rows = shard.rows
    postings = Postings(posting_ids=[row["posting_id"] for row in rows],
                        titles=[row["title"] for row in rows])
    if kind.uses_images:
        postings.image_bytes = [row.get("image_bytes") or b"" for row in rows]
        postings.image_names = [row["image_name"] or f"the photo of posting {row['posting_id']}"
                                for row in rows]
        postings.bad_images = {index: row["bad_image"] for index, row in enumerate(rows)
                               if row["bad_image"]}
    return postings


def cores_per_worker(num_workers: int) -> int:
    """TensorFlow threads for each of ``num_workers`` processes sharing this machine's cores."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, num_workers))
