"""What a model embeds: photos, titles or both.

One :class:`ModelKind` names it everywhere a kind matters (the run config, the export's metadata,
the matching sources, the catalogue), so code asks ``kind.uses_images`` instead of comparing
strings. It is a ``StrEnum``: it compares equal to, formats as and serialises to its plain value
(``"image"``), which is what config files, export metadata and source names hold.
"""

from __future__ import annotations

import enum

from tf_shopee.errors import UserError


class ModelKind(enum.StrEnum):
    """The three kinds of embedding model.

    ``image`` embeds a photo (raw JPEG bytes), ``text`` a title, ``multimodal`` both at once.
    """

    IMAGE = "image"
    TEXT = "text"
    MULTIMODAL = "multimodal"

    @property
    def uses_images(self) -> bool:
        """Whether the model needs a posting's photo."""
        return self is not ModelKind.TEXT

    @property
    def uses_titles(self) -> bool:
        """Whether the model needs a posting's title."""
        return self is not ModelKind.IMAGE

    @classmethod
    def parse(cls, value, *, where: str) -> "ModelKind":
        """``value`` as a kind; UserError naming ``where`` for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"{where}: model kind must be one of {', '.join(MODEL_KINDS)}, got "
                            f"{value!r}") from None


MODEL_KINDS = tuple(kind.value for kind in ModelKind)
