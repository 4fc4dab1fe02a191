"""Several image exports as one: their embeddings concatenated.

``python -m tf_shopee.export concat A B OUT [--weights 1,1]`` (:func:`concat_exports`) writes a
SavedModel export whose embedding of a photo is ``normalise([sqrt(w_a) e_a, sqrt(w_b) e_b])``, the
parts' L2-normalised embeddings: the cosine of two photos is then the weighted mean of the
parts' cosines (:func:`tf_shopee.matching.sources.concat_embeddings`, the 1st-place Shopee
"comb" embedding). Each part decodes the photo at its own size inside the graph, so the result is
an ordinary image export: ``predict.py``, the catalogue, the app and the LiteRT conversion take
it like any other. Its ``embed_pixels`` signature takes pixels at the largest part's size and
resizes them for the smaller parts (test-time views and LiteRT go through it).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from tf_shopee.errors import UserError
from tf_shopee.export.saved_model import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    METADATA_FILE,
    PIXELS_INPUT,
    PIXELS_OUTPUT,
    PIXELS_SIGNATURE,
    SERVING_INPUTS,
    load_saved_model,
    read_saved_model_metadata,
)
from tf_shopee.models.kind import ModelKind


def concat_exports(parts, export_dir, *, weights=None, say=print) -> dict:
    """Write the concatenation of image exports ``parts`` as one export (see the module
    docstring); return its metadata.

    Raises:
        UserError: fewer than two parts, a part that is not an image export, bad weights, or a
            destination that is not empty and not an export.
    """
    import tensorflow as tf

    from tf_shopee.export import model_fingerprint
    from tf_shopee.io_utils import replace_directory, write_json_atomic

    parts = [Path(part) for part in parts]
    if len(parts) < 2:
        raise UserError("concat needs at least two image exports")
    weights = [1.0] * len(parts) if weights is None else [float(value) for value in weights]
    if len(weights) != len(parts) or any(not math.isfinite(value) or value <= 0
                                         for value in weights):
        raise UserError(f"--weights: one positive number per export ({len(parts)}), got "
                        f"{weights}")
    export_dir = Path(export_dir)
    if any(export_dir.resolve() == Path(part).resolve() for part in parts):
        raise UserError(f"{export_dir} is one of the exports to concatenate: write the "
                        "concatenation to another folder")
    if export_dir.exists() and (not export_dir.is_dir() or (
            any(export_dir.iterdir()) and not (export_dir / METADATA_FILE).is_file())):
        raise UserError(f"{export_dir} exists and is not a tf_shopee export: choose another "
                        "folder")
    metadata = [read_saved_model_metadata(part) for part in parts]
    for part, entry in zip(parts, metadata):
        if entry["kind"] != ModelKind.IMAGE:
            raise UserError(f"{part} holds a {entry['kind']} model: concat takes image exports")
        if PIXELS_SIGNATURE not in (entry.get("signatures") or []):
            raise UserError(f"{part} has no {PIXELS_SIGNATURE} signature (exported before it "
                            "existed): export it again with train.py --export")
    loaded = [load_saved_model(part)._loaded for part in parts]
    sizes = [int(entry["image_size"]) for entry in metadata]
    size = max(sizes)
    scales = [math.sqrt(value) for value in weights]

    module = tf.Module(name="tf_shopee_concat")
    module.parts = loaded

    def join(embeddings):
        scaled = [tf.math.l2_normalize(part, axis=1) * scale
                  for part, scale in zip(embeddings, scales)]
        return tf.concat(scaled, axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        embeddings = [part.signatures["serving_default"](image_bytes=image_bytes)["embeddings"]
                      for part in module.parts]
        return {"embeddings": tf.math.l2_normalize(join(embeddings), axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32,
                                                name=PIXELS_INPUT)])
    def embed_pixels(pixels):
        features = []
        for part, part_size in zip(module.parts, sizes):
            resized = pixels if part_size == size else tf.clip_by_value(tf.image.resize(
                pixels, [part_size, part_size], method="bilinear", antialias=True), 0.0, 255.0)
            features.append(part.signatures[PIXELS_SIGNATURE](pixels=resized)[PIXELS_OUTPUT])
        return {PIXELS_OUTPUT: join(features)}

    module.serve, module.embed_pixels = serve, embed_pixels
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": str(ModelKind.IMAGE),
        "embedding_dim": sum(int(entry["embedding_dim"]) for entry in metadata),
        "image_size": size,
        "num_classes": None,
        "threshold": None,
        "run_name": "concat(" + ", ".join(part.name for part in parts) + ")",
        "inputs": list(SERVING_INPUTS[ModelKind.IMAGE]),
        "signatures": ["serving_default", PIXELS_SIGNATURE],
        "trained": True,
        "concat_of": [{"path": str(part.resolve()), "fingerprint": model_fingerprint(part),
                       "image_size": part_size, "embedding_dim": int(entry["embedding_dim"]),
                       "weight": weight, "run_name": entry.get("run_name")}
                      for part, part_size, entry, weight in zip(parts, sizes, metadata, weights)],
    }
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = export_dir.parent / f".{export_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(temporary),
                            signatures={"serving_default": serve, PIXELS_SIGNATURE: embed_pixels})
        write_json_atomic(temporary / METADATA_FILE, payload)  # last: marks a finished export
        replace_directory(temporary, export_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    say(f"wrote {export_dir}: {payload['embedding_dim']}-d concatenation of "
        + ", ".join(f"{part} ({entry['embedding_dim']}-d, {part_size} px, weight {weight:g})"
                    for part, entry, part_size, weight in zip(parts, metadata, sizes, weights)))
    return payload
