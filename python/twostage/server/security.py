"""Who may call what, and which model files may be loaded.

* A bearer token guards writes and model updates (and reads, when ``protect_reads``); it is
  compared in constant time, and a wrong token gets the same answer as a missing one.
* A model offered for a swap is a built-in name or a path that, with every symlink and
  ``..`` resolved, lies under one of the configured model roots: a request cannot make the
  server open ``/etc/passwd`` or another user's files as a "model". Every file in the folder
  is resolved too (the loader opens files by name, and a symlinked ``model.onnx`` would
  otherwise lead out), and each is bounded in size; weights must start like what they claim
  to be before anything hashes or parses them.
* Answers name model files relative to their root: the root itself and the rest of the
  server's file system stay in the server's log.

>>> from pathlib import Path
>>> from twostage.server.security import check_model_path
>>> check_model_path("ce-v2", (Path("/srv/models"),))  # doctest: +SKIP
PosixPath('/srv/models/ce-v2')
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from twostage.server.errors import ApiError


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time compare).

    >>> bearer_ok("Bearer s3cret-token", "s3cret-token"), bearer_ok(None, "s3cret-token")
    (True, False)
    """
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def require_token(header: str | None, token: str | None) -> None:
    """Raise a 401 envelope unless the header carries the token (``None``: auth is off)."""
    if token is None:
        return
    if not bearer_ok(header, token):
        missing = not header
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <token>'"
            if missing
            else "the bearer token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="twostage"'},
        )


def check_model_path(spec: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """The real path of model folder ``spec``, which must lie under one of ``roots``.

    A relative ``spec`` is taken relative to each root in turn (the first that exists wins).
    Symlinks and ``..`` are resolved before the check, so neither escapes a root. Messages
    name ``spec`` as given, never the roots.
    """
    if not roots:
        raise ApiError(
            403,
            "path_not_allowed",
            "no model roots are configured, so only built-in model names can be loaded: "
            "start the server with --model-root DIR",
        )
    raw = Path(os.fspath(spec)).expanduser()
    if "\x00" in str(raw):
        raise ApiError(422, "invalid_request", "the model path contains a NUL byte")
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for cand in candidates:
        try:
            real = cand.resolve()
            if under_roots(real, roots) is None:
                raise ApiError(
                    403,
                    "path_not_allowed",
                    f"model path {os.fspath(spec)!r} resolves outside the model roots",
                )
            if real.exists():
                return real
        except OSError as e:  # a name over the file system's limit, a loop of links
            raise ApiError(
                422,
                "invalid_request",
                f"model path {os.fspath(spec)[:80]!r}: {e.strerror or 'not a usable path'}",
            ) from None
    raise ApiError(
        404, "model_not_found", f"no model folder {os.fspath(spec)!r} under the model roots"
    )


def under_roots(path: Path, roots: Sequence[Path]) -> Path | None:
    """The root that resolved ``path`` lies under, or None."""
    return next((r for r in roots if path == r or path.is_relative_to(r)), None)


def shown_path(path: Path, roots: Sequence[Path]) -> str:
    """``path`` as answers show it: relative to its model root, else its last part only."""
    root = under_roots(path, roots)
    if root is None:
        return path.name
    rel = path.relative_to(root).as_posix()
    return rel if rel != "." else path.name


#: Files a model folder may hold before the check gives up walking it.
MAX_MODEL_FOLDER_FILES = 1000


def check_model_files(folder: Path, roots: Sequence[Path] | None) -> list[Path]:
    """Every file under model folder ``folder`` (real, resolved): each must lie under a root.

    The loader opens files by name (model.onnx, tokenizer.json, config.json, ...), so one
    symlinked file, or a symlinked subfolder, that leads out of the roots is refused (403
    ``path_not_allowed``) even though the folder itself is inside. ``roots=None``: the
    operator's own folder, listed without the containment check.
    """
    shown = roots or ()
    files: list[Path] = []
    pending = [folder]
    seen = {folder}
    while pending:
        current = pending.pop()
        try:
            entries = sorted(current.iterdir())
        except OSError as e:
            raise ApiError(
                422,
                "model_rejected",
                f"cannot list model folder {shown_path(current, shown)}: {e.strerror}",
            ) from None
        for entry in entries:
            real = entry.resolve()
            if roots is not None and under_roots(real, roots) is None:
                raise ApiError(
                    403,
                    "path_not_allowed",
                    f"model file {shown_path(entry, roots)!r} is a link that leads outside "
                    "the model roots",
                )
            if real.is_dir():
                if real not in seen:  # links may form cycles
                    seen.add(real)
                    pending.append(real)
                continue
            files.append(real)
            if len(files) > MAX_MODEL_FOLDER_FILES:
                raise ApiError(
                    422,
                    "model_rejected",
                    f"model folder {shown_path(folder, shown)} holds over "
                    f"{MAX_MODEL_FOLDER_FILES} files: not a model folder",
                )
    return files


# The fields of onnx.ModelProto (number: protobuf wire type) a serialised model starts with.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf) and shift < 64:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def onnx_header_problem(head: bytes, size: int) -> str | None:
    """Why ``head`` (a file's first bytes) cannot start a serialised ONNX model, or None.

    Walks the first few protobuf fields: each must be a ModelProto field with its wire type,
    ``ir_version`` small, and a length-delimited field no longer than the file.

    >>> onnx_header_problem(bytes([8, 8, 0x12, 2]) + b"ab", 6) is None
    True
    >>> onnx_header_problem(b"this is not ONNX", 16)
    'not an ONNX model (its first bytes are not an ONNX protobuf header)'
    """
    bad = "not an ONNX model (its first bytes are not an ONNX protobuf header)"
    if size == 0 or not head:
        return "an empty file, not an ONNX model"
    pos = 0
    try:
        for _ in range(4):
            if pos >= len(head):
                break
            tag, pos = _varint(head, pos)
            number, wire = tag >> 3, tag & 7
            if _ONNX_FIELDS.get(number) != wire:
                return bad
            if wire == 0:
                value, pos = _varint(head, pos)
                if number == 1 and not 1 <= value <= 100:
                    return bad
            else:
                length, pos = _varint(head, pos)
                if pos + length > size:
                    return bad
                pos += length
    except ValueError:
        return bad
    return None


def safetensors_header_problem(head: bytes, size: int) -> str | None:
    """Why ``head`` cannot start a safetensors file (an 8-byte length, then a JSON object).

    >>> safetensors_header_problem(struct.pack("<Q", 2) + b"{}", 10) is None
    True
    """
    bad = "not a safetensors file (its header is not a length and a JSON object)"
    if len(head) < 9:
        return bad
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= size - 8 or head[8:9] != b"{":
        return bad
    return None


def model_file_problem(path: Path, max_bytes: int, roots: Sequence[Path]) -> str | None:
    """Why the loader must not open model file ``path``: over ``max_bytes``, or weights that
    do not start like ONNX / safetensors. Read: the first 4 KiB, never the whole file."""
    name = shown_path(path, roots)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return (
                f"{name} is {size / 2**30:.2f} GiB; the limit is {max_bytes / 2**30:.2f} GiB "
                "(max_model_bytes)"
            )
        check = None
        if path.suffix == ".onnx":
            check = onnx_header_problem
        elif path.suffix == ".safetensors":
            check = safetensors_header_problem
        if check is None:
            return None
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"cannot read {name}: {e.strerror}"
    problem = check(head, size)
    return f"{name} is {problem}" if problem else None


__all__ = [
    "bearer_ok",
    "check_model_files",
    "check_model_path",
    "model_file_problem",
    "onnx_header_problem",
    "require_token",
    "safetensors_header_problem",
    "shown_path",
    "under_roots",
]
