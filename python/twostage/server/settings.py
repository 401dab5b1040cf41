"""The server's settings: one frozen dataclass, with defaults from ``TWOSTAGE_*`` variables.

The engine's own settings (k, depth, budget, caches, limits) stay in
:class:`~twostage.config.EngineConfig`; these are the service's: where it listens, who may
write, which model folders may be loaded, how requests are batched and bounded. The server's
environment variables are read here and only here.

>>> from twostage.server.settings import ServerSettings
>>> s = ServerSettings(collection="docs/", token="s3cret-token")
>>> s.host, s.port, s.batching
('127.0.0.1', 8000, True)
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from twostage.config import EngineConfig
from twostage.errors import InvalidArgument

Precision = Literal["int8", "fp32"]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("twostage.server")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_paths(name: str) -> tuple[Path, ...]:
    raw = os.environ.get(name, "")
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())


def _env_opt_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"environment variable {name}={raw!r} is not an integer") from None


def _env_int(name: str, default: int) -> int:
    value = _env_opt_int(name)
    return default if value is None else value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidArgument(f"environment variable {name}={raw!r} is not a number") from None


#: The largest model file (ONNX graph or safetensors) a swap may load: protobuf cannot hold
#: a graph over 2 GiB in one file, and the shipped reranker is 17 MB.
DEFAULT_MAX_MODEL_BYTES = 2 << 30


def read_token(token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The bearer token: from ``token_file`` if given, else ``$TWOSTAGE_TOKEN`` (or None).

    A file's surrounding whitespace is ignored (``echo secret > token`` works); an empty
    file or variable is refused rather than read as "no token".

    >>> read_token(None) is None or isinstance(read_token(None), str)
    True
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise InvalidArgument(f"cannot read the token file {path}: {e.strerror}") from e
        if not token:
            raise InvalidArgument(f"the token file {path} is empty")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file %s is readable by other users: chmod 600 it", path)
        return token
    env = os.environ.get("TWOSTAGE_TOKEN")
    if env is None:
        return None
    if not env.strip():
        raise InvalidArgument("TWOSTAGE_TOKEN is set but empty")
    return env.strip()


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """How ``twostage serve`` runs. Validated on construction; see :func:`create_app`.

    Security: writes (``POST/DELETE /documents``) and model updates need ``Authorization:
    Bearer <token>``; without a token the app refuses to start unless ``insecure_no_auth``.
    ``protect_reads`` puts search, documents, models and metrics behind the token too.
    Model folders offered for a swap must lie under one of ``model_roots``, and so must every
    file in them (a symlinked file that leads out is refused).

    Overload: at most ``max_pending_searches`` searches wait or run at once (default
    ``workers * 4``) and ``max_pending_writes`` writes; one over the bound is answered 503
    ``overloaded`` with ``Retry-After`` at once, and a search still queued when its deadline
    passes is answered 503 too rather than run late. A request without the token may not ask
    for more than ``max_anonymous_depth`` / ``max_anonymous_budget_ms`` (never less than the
    server's own defaults); over them it gets 422 naming the cap (not a silent clamp: the
    caller learns what it got). With the token, the engine's limits apply; with no token
    configured (``insecure_no_auth``) every caller is capped.
    """

    collection: Path
    #: Serve without the collection's writer lock: writes answer 409 ``read_only`` and
    #: searches follow what the process that holds the lock commits (within 0.5 s).
    read_only: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure_no_auth: bool = False
    protect_reads: bool = field(default_factory=lambda: _env_flag("TWOSTAGE_PROTECT_READS"))
    model_roots: tuple[Path, ...] = field(
        default_factory=lambda: _env_paths("TWOSTAGE_MODEL_ROOTS")
    )
    #: The reranker at start: a built-in name, a folder under a model root, or None for the
    #: shipped default where this install has one ("none": first stage only until a PUT).
    reranker: str | None = None
    reranker_precision: Precision = "int8"
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: Cross-request batching of reranker pairs (one queue, one worker).
    batching: bool = True
    batch_max_pairs: int = 16
    batch_wait_ms: float = 2.0
    #: Threads running reranker batches from the shared queue.
    batch_workers: int = 2
    #: Threads that run searches and writes (the event loop never runs inference).
    workers: int = 4
    max_body_bytes: int = 1 << 20
    max_batch_docs: int = 256
    #: A JSONL validation set for model updates: {"query", "documents": [{"text",
    #: "relevance"}]} per line; a candidate whose NDCG@10 on it is below the floor is refused.
    validation_set: Path | None = None
    ndcg_floor: float | None = None
    #: Refuse a reranker that ranks the shipped sanity set (:mod:`twostage.sanity`) no better
    #: than chance: at start, on a swap, for an experiment, on a restore. False: the check is
    #: not run (a request can also waive it for one model: ``"sanity_check": false``).
    sanity_check: bool = True
    #: Poll the active model's folder and reload it when its files change (opt-in).
    watch_models: bool = False
    watch_interval_s: float = 2.0
    #: Model update records kept for GET /models.
    history: int = 20
    #: The SQLite file of interleaving experiments (configs, impressions, clicks); None:
    #: ``experiments.sqlite`` in the collection's folder.
    experiments_db: Path | None = None
    #: Searches waiting for or holding a search thread at once; one more gets 503. None:
    #: ``workers * 4`` (a burst of that size waits a few searches' time at most).
    max_pending_searches: int | None = field(
        default_factory=lambda: _env_opt_int("TWOSTAGE_MAX_PENDING_SEARCHES")
    )
    #: Writes (upserts, deletes) waiting for or holding the writer thread at once.
    max_pending_writes: int = field(
        default_factory=lambda: _env_int("TWOSTAGE_MAX_PENDING_WRITES", 8)
    )
    #: The most ``depth`` a search without the token may ask for. None: twice the serving
    #: default depth, at least 100.
    max_anonymous_depth: int | None = field(
        default_factory=lambda: _env_opt_int("TWOSTAGE_MAX_ANONYMOUS_DEPTH")
    )
    #: The most ``budget_ms`` a search without the token may ask for (or the default budget,
    #: if that is higher).
    max_anonymous_budget_ms: float = field(
        default_factory=lambda: _env_float("TWOSTAGE_MAX_ANONYMOUS_BUDGET_MS", 1000.0)
    )
    #: Seconds an ``overloaded`` answer asks the client to wait (``Retry-After``).
    retry_after_s: int = 1
    #: The largest model file a swap may load (checked before the file is hashed or parsed).
    max_model_bytes: int = field(
        default_factory=lambda: _env_int("TWOSTAGE_MAX_MODEL_BYTES", DEFAULT_MAX_MODEL_BYTES)
    )
    #: Where the reranker chosen by a swap is remembered across restarts; None:
    #: ``reranker-state.json`` beside the experiments file.
    model_state: Path | None = None
    #: How long after an experiment stops its impressions still take click feedback (clicks
    #: on answers served just before the stop arrive late); 0: none after the stop.
    feedback_grace_s: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "collection", Path(self.collection))
        roots = tuple(Path(r).expanduser().resolve() for r in self.model_roots)
        object.__setattr__(self, "model_roots", roots)
        if self.validation_set is not None:
            object.__setattr__(self, "validation_set", Path(self.validation_set))
        if self.experiments_db is not None:
            object.__setattr__(self, "experiments_db", Path(self.experiments_db))
        if self.model_state is not None:
            object.__setattr__(self, "model_state", Path(self.model_state))
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port must be in 0..65535, not {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise InvalidArgument("the token must be at least 8 characters")
        if self.reranker_precision not in ("int8", "fp32"):
            raise InvalidArgument(
                f"reranker_precision must be int8 or fp32, not {self.reranker_precision!r}"
            )
        for name in (
            "batch_max_pairs",
            "batch_workers",
            "workers",
            "max_body_bytes",
            "max_batch_docs",
            "history",
            "max_pending_writes",
            "retry_after_s",
            "max_model_bytes",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("max_pending_searches", "max_anonymous_depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgument(f"{name} must be >= 1, not {value}")
        if not self.max_anonymous_budget_ms > 0:  # NaN too
            raise InvalidArgument(
                f"max_anonymous_budget_ms must be > 0, not {self.max_anonymous_budget_ms}"
            )
        if self.batch_wait_ms < 0 or self.watch_interval_s <= 0:
            raise InvalidArgument("batch_wait_ms must be >= 0 and watch_interval_s > 0")
        if not self.feedback_grace_s >= 0:  # NaN too
            raise InvalidArgument(f"feedback_grace_s must be >= 0, not {self.feedback_grace_s}")
        if self.ndcg_floor is not None and not 0.0 <= self.ndcg_floor <= 1.0:
            raise InvalidArgument(f"ndcg_floor must be in 0..1, not {self.ndcg_floor}")
        if self.ndcg_floor is not None and self.validation_set is None:
            raise InvalidArgument("ndcg_floor needs a validation_set to measure it on")
        if self.token is None and not self.insecure_no_auth:
            raise InvalidArgument(
                "no token for the write and admin endpoints: set TWOSTAGE_TOKEN or pass "
                "--token-file FILE (or, on a trusted machine, --insecure-no-auth)"
            )
        if self.protect_reads and self.token is None:
            raise InvalidArgument("protect_reads needs a token (it cannot go with no auth)")
        if self.insecure_no_auth and self.host not in LOOPBACK:
            raise InvalidArgument(
                f"--insecure-no-auth serves only loopback addresses, not {self.host}: "
                "set a token to listen on other interfaces"
            )

    @property
    def experiments_path(self) -> Path:
        """Where the experiment store lives."""
        return self.experiments_db or self.collection / "experiments.sqlite"

    @property
    def model_state_path(self) -> Path:
        """Where the live reranker choice is remembered."""
        return self.model_state or self.experiments_path.with_name("reranker-state.json")

    @property
    def search_limit(self) -> int:
        """Searches waiting or running at once before one more is refused."""
        return self.max_pending_searches or self.workers * 4

    @property
    def auth(self) -> bool:
        """Whether write and admin endpoints check the token."""
        return self.token is not None


__all__ = ["DEFAULT_MAX_MODEL_BYTES", "LOOPBACK", "Precision", "ServerSettings", "read_token"]
