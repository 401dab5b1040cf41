"""The unit a collection stores: a document with a string id, optional title and metadata.

>>> from twostage.document import Document
>>> Document("d1", "HNSW is a graph index.", title="ANN")
Document(id='d1', text='HNSW is a graph index.', title='ANN', metadata=None)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from twostage.errors import InvalidArgument

MAX_ID_BYTES = 512
MAX_TEXT_CHARS = 1_000_000  # one document; a reranker reads the first few hundred tokens


def check_unicode(value: str, what: str) -> None:
    """Refuse a string that is not valid Unicode text: a lone surrogate (``"\\ud800"``, what
    JSON's ``\\uD800`` escape or undecodable bytes under ``surrogateescape`` give) cannot be
    written as UTF-8, so it would be stored and then fail every read that returns it.

    >>> check_unicode("caf\\u00e9", "text")
    >>> check_unicode("bad \\ud800", "text")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    twostage.errors.InvalidArgument: text holds a lone surrogate (U+D800) at character 4: ...
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        cp = ord(value[e.start])
        # Python decodes command-line and file bytes that are not UTF-8 to U+DC80..U+DCFF.
        why = (
            f"; it stands for byte 0x{cp - 0xDC00:02X}: the input is not UTF-8"
            if (0xDC80 <= cp <= 0xDCFF)
            else ""
        )
        raise InvalidArgument(
            f"{what} holds a lone surrogate (U+{cp:04X}) at character {e.start}: not valid "
            f"Unicode text{why}"
        ) from None


def check_json_unicode(value: Any, what: str) -> None:
    """:func:`check_unicode` over every key and string inside a JSON-like value."""
    if isinstance(value, str):
        check_unicode(value, what)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                check_unicode(k, f"{what} key {k.encode('utf-8', 'backslashreplace').decode()!r}")
            check_json_unicode(v, f"{what}[{k!r}]" if _printable(k) else what)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json_unicode(v, f"{what}[{i}]")


def _printable(k: object) -> bool:
    if not isinstance(k, str):
        return True
    try:
        k.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        check_unicode(self.id, "document id")
        if len(self.id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"document id {self.id[:40]!r}... is over {MAX_ID_BYTES} bytes")
        if not isinstance(self.text, str):
            raise InvalidArgument(f"document {self.id!r}: text is {type(self.text).__name__}")
        if not isinstance(self.title, str):
            raise InvalidArgument(f"document {self.id!r}: title is {type(self.title).__name__}")
        check_unicode(self.text, f"document {self.id!r}: text")
        check_unicode(self.title, f"document {self.id!r}: title")
        if not (self.text.strip() or self.title.strip()):
            raise InvalidArgument(f"document {self.id!r}: text and title are both empty")
        if len(self.text) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"document {self.id!r}: text is {len(self.text)} characters, over {MAX_TEXT_CHARS}"
            )
        if self.metadata is not None:
            if not isinstance(self.metadata, dict):
                raise InvalidArgument(f"document {self.id!r}: metadata must be a dict")
            check_json_unicode(self.metadata, f"document {self.id!r}: metadata")
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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Document:
        """A document from a mapping with the keys ``id`` (required; BEIR's ``_id`` is read as
        it), ``text``, ``title`` and ``metadata``, as JSON APIs and BEIR corpus lines hand them
        over; any other key is refused by name.

        >>> Document.from_dict({"id": "d1", "text": "HNSW is a graph index.", "title": "ANN"})
        Document(id='d1', text='HNSW is a graph index.', title='ANN', metadata=None)
        """
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"expected a mapping, not {type(d).__name__}")
        if "_id" in d:
            if "id" in d:
                raise InvalidArgument(f"document {d['_id']!r}: both 'id' and '_id' given")
            d = {("id" if k == "_id" else k): v for k, v in d.items()}
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:
            raise InvalidArgument(
                f"document {d.get('id')!r}: unknown keys {unknown} (id, text, title, metadata)"
            )
        if "id" not in d:
            raise InvalidArgument(f"a document needs an 'id' (keys given: {sorted(map(str, d))})")
        return cls(d["id"], d.get("text", ""), d.get("title", ""), d.get("metadata"))


_FIELDS = ("id", "text", "title", "metadata")

#: What a collection's ``add`` takes per document: a :class:`Document` or a mapping with its
#: keys (:meth:`Document.from_dict`).
DocumentLike: TypeAlias = "Document | Mapping[str, Any]"


def as_document(d: object, where: str = "document") -> Document:
    """``d`` itself if it is a :class:`Document`, else :meth:`Document.from_dict` of it."""
    if isinstance(d, Document):
        return d
    if isinstance(d, Mapping):
        return Document.from_dict(d)
    raise InvalidArgument(f"{where} is {type(d).__name__}, expected a Document or a dict")


__all__ = [
    "MAX_ID_BYTES",
    "MAX_TEXT_CHARS",
    "Document",
    "DocumentLike",
    "as_document",
    "check_json_unicode",
    "check_unicode",
]
