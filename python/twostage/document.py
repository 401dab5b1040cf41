"""The unit a collection stores: a document with a string id, optional title and metadata.

>>> from twostage.document import Document
>>> Document("d1", "HNSW is a graph index.", title="ANN")
Document(id='d1', text='HNSW is a graph index.', title='ANN', metadata=None)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twostage.errors import InvalidArgument

MAX_ID_BYTES = 512
MAX_TEXT_CHARS = 1_000_000  # one document; a reranker reads the first few hundred tokens


@dataclass(frozen=True)
class Document:
    """A document: ``id`` (non-empty string, unique in a collection), ``text``, ``title``.

    ``metadata`` is any JSON-serialisable mapping; filters match on its top-level keys.
    The text the encoder and the reranker read is ``title`` and ``text`` joined.
    """

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidArgument(f"document id must be a non-empty string, got {self.id!r}")
        if len(self.id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"document id {self.id[:40]!r}... is over {MAX_ID_BYTES} bytes")
        if not isinstance(self.text, str):
            raise InvalidArgument(f"document {self.id!r}: text is {type(self.text).__name__}")
        if not isinstance(self.title, str):
            raise InvalidArgument(f"document {self.id!r}: title is {type(self.title).__name__}")
        if not (self.text.strip() or self.title.strip()):
            raise InvalidArgument(f"document {self.id!r}: text and title are both empty")
        if len(self.text) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"document {self.id!r}: text is {len(self.text)} characters, over {MAX_TEXT_CHARS}"
            )
        if self.metadata is not None:
            if not isinstance(self.metadata, dict):
                raise InvalidArgument(f"document {self.id!r}: metadata must be a dict")
            try:
                json.dumps(self.metadata, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"document {self.id!r}: metadata is not JSON: {e}") from e

    @property
    def content(self) -> str:
        """What the models read: the title and the text, joined by a blank line."""
        if self.title and self.text:
            return f"{self.title}\n\n{self.text}"
        return self.title or self.text


__all__ = ["MAX_ID_BYTES", "MAX_TEXT_CHARS", "Document"]
