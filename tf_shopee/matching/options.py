"""The settings of a matching run, each checked once, where it enters.

:class:`MatchOptions` is how postings are matched (which sources, which decision, how many
neighbours); :class:`PredictOptions` adds what a prediction job reads and writes. Both check every
value when they are made, so a bad number, source name or threshold fails before anything is read
or embedded, with the flag's name in the message; later stages trust them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tf_shopee.data.views import parse_tta
from tf_shopee.errors import UserError
from tf_shopee.matching.decision import AUTO_METHOD, THRESHOLD_METHOD_CHOICES, check_threshold
from tf_shopee.matching.embedding import DEFAULT_BATCH_SIZE
from tf_shopee.matching.sources import check_source_name
from tf_shopee.matching.topk import DEFAULT_K, DEFAULT_MAX_CHUNK_MB, DEFAULT_MAX_MATCHES

SEARCH_MODES = ("exact", "ann", "auto")


@dataclass
class MatchOptions:
    """How postings are matched: models and switches, the decision's inputs, neighbours.

    Attributes:
        models: exported SavedModel folders (``--model``), one embedding source each.
        use_tfidf, use_phash, use_concat: the model-free and concatenated sources.
        thresholds_file: a ``thresholds.json`` written by a search, applied exactly.
        threshold_overrides: source → plain threshold (``--threshold``; bits for phash sources).
        search_thresholds: folder to write the decision a search chooses on these (labelled)
            postings; empty: no search.
        threshold_method: how a search makes thresholds hold on a bigger pool; ``auto``: the
            search's transfer test chooses (:mod:`tf_shopee.matching.transfer`).
        min2: give a lonely posting its nearest neighbour (when the decision has min2).
        inb_iterations: blending rounds of embedding sources; None: as the decision says, 0: off.
        inb_neighbours: neighbours blended per posting that a search tries (None: all of ``k``).
        inb_grid: blend thresholds a search tries (empty: the search's default grid).
        k: neighbours per posting.
        max_matches: matches per posting, itself included.
        max_chunk_mb: memory budget of one similarity chunk.
        batch_size: postings per model call.
        cache_dir: the embedding cache folder (empty: none; a :class:`PredictOptions` keeps it
            in ``.embedding_cache`` beside ``out``).
        progress: progress bars and log lines.
        tta: test-time views of every photo, averaged (``--tta``: ``flip``, ``crop`` or
            ``flip,crop``; empty: none); image models only.
        query_blend: queries against a catalogue: blend each query's embeddings with those of
            its nearest other queries of the same run (``--query-blend``; 0: off).
        query_blend_threshold: the similarity a query must have to another to be blended with
            it (``--query-blend-threshold``).
    """

    models: list[str] = field(default_factory=list)
    use_tfidf: bool = True
    use_phash: bool = True
    use_concat: bool = True
    thresholds_file: str = ""
    threshold_overrides: dict[str, float] = field(default_factory=dict)
    search_thresholds: str = ""
    threshold_method: str = AUTO_METHOD
    min2: bool = True
    inb_iterations: int | None = None
    inb_neighbours: tuple[int | None, ...] = (None,)
    inb_grid: tuple[float, ...] = ()
    k: int = DEFAULT_K
    max_matches: int = DEFAULT_MAX_MATCHES
    max_chunk_mb: int = DEFAULT_MAX_CHUNK_MB
    batch_size: int = DEFAULT_BATCH_SIZE
    cache_dir: str = ""
    progress: bool = True
    tta: str = ""
    query_blend: int = 0
    query_blend_threshold: float = 0.5

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Check every value (UserError naming the flag); thresholds are normalised to their
        units (whole bits for phash sources)."""
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.k < 2:
            raise UserError(f"--k must be at least 2 (the posting and a neighbour), got {self.k}")
        if self.max_matches < 1:  # above k it caps nothing: no more than k are ever found
            raise UserError(f"--max-matches must be at least 1, got {self.max_matches}")
        if not self.max_chunk_mb > 0:
            raise UserError(f"--max-chunk-mb must be positive, got {self.max_chunk_mb}")
        if self.inb_iterations is not None and self.inb_iterations < 0:
            raise UserError(f"--inb-iterations must be 0 or more, got {self.inb_iterations}")
        for count in self.inb_neighbours:
            if count is not None and not 2 <= count <= self.k:
                raise UserError(f"--inb-neighbours: each count must be from 2 to k={self.k} (or "
                                f"'all'), got {count}")
        for value in self.inb_grid:
            if not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise UserError(f"--inb-grid: blend thresholds are similarities in [0, 1], got "
                                f"{value!r}")
        self.views = parse_tta(self.tta)  # UserError naming --tta for an unknown view
        if self.query_blend < 0:
            raise UserError(f"--query-blend must be 0 (off) or more, got {self.query_blend}")
        if not 0.0 <= self.query_blend_threshold <= 1.0:
            raise UserError(f"--query-blend-threshold is a similarity in [0, 1], got "
                            f"{self.query_blend_threshold}")
        if self.threshold_method not in THRESHOLD_METHOD_CHOICES:
            raise UserError(f"--threshold-method must be one of "
                            f"{', '.join(THRESHOLD_METHOD_CHOICES)}, got "
                            f"{self.threshold_method!r}")
        self.threshold_overrides = {
            check_source_name(name, where=f"--threshold {name}={value}"):
            check_threshold(name, value, where=f"--threshold {name}={value}")
            for name, value in self.threshold_overrides.items()
        }

    def describe(self) -> dict:
        """The settings that decide the matches, JSON-ready (what the demo prints and reports
        keep)."""
        return {
            "thresholds_file": self.thresholds_file or None,
            "threshold_overrides": dict(self.threshold_overrides),
            "search_thresholds": self.search_thresholds or None,
            "threshold_method": self.threshold_method,
            "use_tfidf": self.use_tfidf,
            "use_phash": self.use_phash,
            "use_concat": self.use_concat,
            "min2": self.min2,
            "inb_iterations": self.inb_iterations,
            "inb_neighbours": list(self.inb_neighbours),
            "inb_grid": list(self.inb_grid),
            "k": self.k,
            "max_matches": self.max_matches,
            "tta": self.tta or None,
            "query_blend": self.query_blend or None,
            "query_blend_threshold": self.query_blend_threshold if self.query_blend else None,
        }


@dataclass
class PredictOptions(MatchOptions):
    """A prediction job (``predict.py``): the postings read, the matching, the outputs.

    Attributes (beside :class:`MatchOptions`'):
        csv, images, tfrecords, fold, encoding: the postings
            (:func:`tf_shopee.matching.postings.read_postings`).
        out: the submission CSV to write.
        evaluate: score the matches against the labels.
        report: a JSON report to write.
        catalog: match against this catalogue index instead of each other.
        search: with ``catalog``: exact, ann or auto search.
        nprobe: with ``catalog`` and ann: cells probed per query (0: the default).
        embeddings: a ``python -m tf_shopee.beam embed`` output holding the postings'
            embeddings by every ``--model``: read instead of embedding (no ``--images`` needed).
    """

    csv: str = ""
    images: str = ""
    tfrecords: str = ""
    fold: int | None = None
    encoding: str | None = None
    out: str = "submission.csv"
    evaluate: bool = False
    report: str = ""
    catalog: str = ""
    search: str = "auto"
    nprobe: int = 0
    embeddings: str = ""

    def check(self) -> None:
        super().check()
        if self.embeddings and not self.models and not self.catalog:
            raise UserError("--embeddings DIR needs the --model folders its embeddings were made "
                            "with (they are checked by fingerprint)")
        if self.embeddings and self.views.count > 1:
            raise UserError("--embeddings holds one plain embedding per photo: --tta needs the "
                            "photos embedded here (drop --embeddings or --tta)")
        if not self.cache_dir:  # the default cache sits beside the submission
            self.cache_dir = str(Path(self.out).absolute().parent / ".embedding_cache")
        if self.search not in SEARCH_MODES:
            raise UserError(f"--search must be one of {', '.join(SEARCH_MODES)}, got "
                            f"{self.search!r}")
        if self.nprobe < 0:
            raise UserError(f"--nprobe must be 0 (the default) or more, got {self.nprobe}")
        if self.catalog:
            if self.search_thresholds:
                raise UserError("--search-thresholds tunes self-matching thresholds: run it "
                                "without --catalog, then pass the file with --thresholds")
            if self.inb_iterations:
                raise UserError("--inb-iterations is not available with --catalog (the "
                                "catalogue side is not re-blended per query); drop it")
        elif self.query_blend:
            raise UserError("--query-blend blends queries against a --catalog with each other; "
                            "self-matching blends with --inb-iterations / --inb-neighbours")

    def postings_arguments(self) -> dict:
        """The keyword arguments of :func:`tf_shopee.matching.postings.read_postings` for this
        job's postings."""
        return {"csv": self.csv, "images": self.images, "tfrecords": self.tfrecords,
                "fold": self.fold, "encoding": self.encoding}

    @property
    def needs_labels(self) -> bool:
        """Whether the job scores or searches, which needs label_group."""
        return bool(self.evaluate or self.search_thresholds)


def parse_threshold_overrides(values: list[str]) -> dict[str, float]:
    """``SOURCE=VALUE`` strings → {source: value as a number}; names and ranges are checked by
    :class:`~tf_shopee.matching.options.MatchOptions`, where every option is checked."""
    overrides = {}
    for value in values:
        name, separator, number = value.partition("=")
        name = name.strip()
        if not separator or not name or not number.strip():
            raise UserError(f"--threshold expects SOURCE=VALUE (e.g. tfidf=0.6 or phash=8), got "
                            f"{value!r}")
        try:
            overrides[name] = float(number)
        except ValueError:
            raise UserError(f"--threshold {value}: {number!r} is not a number") from None
    return overrides
