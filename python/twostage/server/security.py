"""Who may call what, and which model files may be loaded.

* A bearer token guards writes and model updates (and reads, when ``protect_reads``); it is
  compared in constant time, and a wrong token gets the same answer as a missing one.
* A model offered for a swap is a built-in name or a path that, with every symlink and
  ``..`` resolved, lies under one of the configured model roots: a request cannot make the
  server open ``/etc/passwd`` or another user's files as a "model".

>>> from pathlib import Path
>>> from twostage.server.security import check_model_path
>>> check_model_path("ce-v2", (Path("/srv/models"),))  # doctest: +SKIP
PosixPath('/srv/models/ce-v2')
"""

from __future__ import annotations

import hmac
import os
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
    Symlinks and ``..`` are resolved before the check, so neither escapes a root.
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
        real = cand.resolve()
        if not any(real == root or real.is_relative_to(root) for root in roots):
            raise ApiError(
                403,
                "path_not_allowed",
                f"model path {os.fspath(spec)!r} resolves outside the model roots "
                f"({', '.join(map(str, roots))})",
            )
        if real.exists():
            return real
    raise ApiError(
        404,
        "model_not_found",
        f"no model folder {os.fspath(spec)!r} under the model roots ({', '.join(map(str, roots))})",
    )


__all__ = ["bearer_ok", "check_model_path", "require_token"]
