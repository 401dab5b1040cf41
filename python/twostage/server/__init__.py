"""The HTTP service: ``twostage serve DIR`` (FastAPI on uvicorn).

Needs the ``server`` extra (``pip install 'twostage-search[server]'``: fastapi, uvicorn,
prometheus-client). See :mod:`twostage.server.app` for the endpoints.

>>> from twostage.server import ServerSettings, create_app
>>> app = create_app(ServerSettings(collection="docs/", token="s3cret-token"))  # doctest: +SKIP
"""

from __future__ import annotations

from twostage.server.app import create_app
from twostage.server.batching import Batcher
from twostage.server.settings import ServerSettings, read_token

__all__ = ["Batcher", "ServerSettings", "create_app", "read_token"]
