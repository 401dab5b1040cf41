"""``twostage serve --ray``: the HTTP API of ``twostage serve``, with the reranker on Ray replicas.

One Serve application of two deployments:

* ``reranker``: the replicas (:mod:`twostage.distributed.serving`), autoscaled;
* ``ingress``: the very FastAPI app of ``twostage serve`` (:func:`twostage.server.create_app`,
  every route, limit, error and metric the same), built in its replica, whose engine runs the
  first stage (the collection is opened there) and sends each search's pairs to the
  replicas (:class:`~twostage.distributed.serving.RayScorer`). ``PUT /models/reranker`` and
  the rollback validate the model there as the server does, then roll it out across the
  replicas (:func:`~twostage.distributed.rollout.rollout`) before the ingress pins it;
  rollouts started elsewhere are followed (:class:`~twostage.distributed.rollout.EngineFollower`).

Serve's HTTP proxy answers on ``host:port``. The ingress holds the collection's writer lock,
so it runs one replica (a read-only collection may run more: ``ingress_replicas``).
An interleaving experiment's candidate is not on the replicas: the ingress scores it itself.

For ``serve deploy`` (a Serve config file, a KubeRay RayService): :func:`build` is the
application builder (``import_path: twostage.distributed.ingress:build``), its ``args`` the
keys of :class:`IngressOptions` plus ``collection``, ``reranker``, ``token``... (any
:class:`~twostage.server.ServerSettings` field). See docs/distributed-serving.md.

>>> from twostage.distributed.ingress import IngressOptions, serve_app
>>> settings = ServerSettings(collection="docs/", token="s3cret-token")  # doctest: +SKIP
>>> app = serve_app(settings, IngressOptions())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage.config import default_reranker
from twostage.distributed import require_ray
from twostage.distributed.rollout import EngineFollower, ModelSpec, coordinator, rollout
from twostage.distributed.serving import RayScorer, ReplicaConfig, Scaling, reranker_app
from twostage.errors import InvalidArgument, InvalidModel

if TYPE_CHECKING:
    from twostage.reranker import Reranker
    from twostage.server.app import Service
    from twostage.server.models import ModelRecord
    from twostage.server.settings import ServerSettings

log = logging.getLogger("twostage.distributed")

#: The Serve application ``twostage serve --ray`` deploys.
APP = "twostage"


@dataclass(frozen=True, kw_only=True)
class IngressOptions:
    """How ``serve --ray`` lays out its deployments.

    Args:
        scaling: the reranker replicas (:class:`~twostage.distributed.serving.Scaling`).
        ingress_replicas: HTTP replicas; more than one needs a read-only collection (the
            writer lock is one process's).
        ingress_cpus: what an ingress replica reserves (it runs the first stage).
        split: calls a search's pairs are sent as (:class:`RayScorer`'s ``split``).
        grace_ms: how long past a search's deadline its pairs may still come back.
    """

    scaling: Scaling = field(default_factory=Scaling)
    ingress_replicas: int = 1
    ingress_cpus: float = 1.0
    split: int = 1
    grace_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.ingress_replicas < 1 or not self.ingress_cpus > 0:
            raise InvalidArgument("ingress_replicas must be >= 1 and ingress_cpus > 0")


class Ingress:
    """The body of the ingress deployment: builds the server's app in its replica."""

    def __init__(self, reranker: Any, settings: ServerSettings, options: IngressOptions) -> None:
        require_ray()
        from ray import serve

        ctx = serve.get_replica_context()
        self._app_name = ctx.app_name
        self._options = options
        coordinator(self._app_name)  # before any rollout this replica may start
        from twostage.server.batching import Batcher

        # An experiment's candidate (no replica holds it) is scored here.
        self._local = Batcher(max_pairs=settings.batch_max_pairs, workers=1)
        self._scorer = RayScorer(
            reranker, split=options.split, grace_ms=options.grace_ms, fallback=self._local
        )
        self._follower: EngineFollower | None = None
        self._service: Service | None = None
        self._lock = threading.Lock()
        serving = None
        try:
            import ray

            configured = ModelSpec(
                settings.reranker or default_reranker() or "none", settings.reranker_precision
            )
            serving = ray.get(coordinator(self._app_name).serving.remote(configured), timeout=60)
        except Exception as e:  # no coordinator answer: start on the configured model
            log.warning("ingress: the rollout coordinator did not answer (%s)", e)
        if serving is not None:  # a rollout installed it since the configuration was written
            model = serving[0]
            settings = dataclasses.replace(
                settings,
                reranker=model.spec,
                reranker_precision="fp32" if model.precision == "fp32" else "int8",
            )
        self._settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        from twostage.server.app import create_app

        return create_app(
            self._settings, scorer=self._scorer, install=self._install, on_load=self._loaded
        )

    def _loaded(self, service: Service) -> None:
        assert service.engine is not None and service.registry is not None
        registry = service.registry
        self._service = service

        def install(rr: Reranker, model: ModelSpec) -> None:
            registry.follow(rr, model.spec, model.precision)

        self._follower = EngineFollower(
            service.engine, self._app_name, install=install, name="ingress"
        )

    def _install(self, rr: Reranker, rec: ModelRecord) -> None:
        """The registry's installer: roll the validated model out across the replicas."""
        spec = str(rec.path) if rec.path is not None else rec.spec
        skip = (self._follower.id,) if self._follower is not None else ()
        result = rollout(
            self._app_name,
            ModelSpec(spec, rec.precision),
            sanity_check=rec.sanity_check,
            expect_version=rr.version,
            skip=skip,
        )
        if not result.ok:
            back = len(result.rolled_back)
            raise InvalidModel(
                f"the rollout stopped: {result.reason} ({back} replica(s) rolled back)"
            )

    def __del__(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        self._local.close(timeout=1.0)


def serve_app(settings: ServerSettings, options: IngressOptions | None = None) -> Any:
    """The Serve application: the reranker deployment bound into the ingress.

    The replicas load ``settings.reranker`` (or the shipped default) at its precision, with
    the server's sanity check, validation set and floor.
    """
    require_ray()
    from ray import serve

    options = options or IngressOptions()
    if options.ingress_replicas > 1 and not settings.read_only:
        raise InvalidArgument(
            "more than one ingress replica needs a read-only collection (--read-only): the "
            "writer lock is held by one process"
        )
    if settings.reranker == "none":
        raise InvalidArgument("serve --ray needs a reranker to put on the replicas, not 'none'")
    replica = ReplicaConfig(
        reranker=settings.reranker,
        precision=settings.reranker_precision,
        max_wait_ms=settings.batch_wait_ms,
        sanity_check=settings.sanity_check,
        validation_set=settings.validation_set,
        ndcg_floor=settings.ndcg_floor,
    )
    ingress = serve.deployment(
        name="ingress",
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": options.ingress_cpus},
        # The app's own admission bounds searches; Serve only forwards.
        max_ongoing_requests=max(settings.search_limit + settings.max_pending_writes, 8),
        health_check_timeout_s=60.0,
        graceful_shutdown_timeout_s=15.0,
    )(serve.ingress()(Ingress))
    return ingress.bind(reranker_app(replica, options.scaling), settings, options)


def build(args: dict[str, Any]) -> Any:
    """The application builder for ``serve deploy`` / ``serve run``
    (``import_path: twostage.distributed.ingress:build``): ``args`` holds
    :class:`~twostage.server.ServerSettings` fields (``collection``, ``reranker``,
    ``token`` or ``token_file``...), the keys of :class:`IngressOptions` and
    ``replicas`` (``"2"`` or ``"1-4"``), ``replica_cpus``, ``target_ongoing_requests``.
    """
    from twostage.server.settings import ServerSettings, read_token

    args = dict(args)
    scaling = scaling_from(
        str(args.pop("replicas", "1")),
        replica_cpus=float(args.pop("replica_cpus", 1.0)),
        target_ongoing_requests=float(args.pop("target_ongoing_requests", 2.0)),
    )
    opts = {
        k: args.pop(k)
        for k in ("ingress_replicas", "ingress_cpus", "split", "grace_ms")
        if k in args
    }
    if "token_file" in args:
        args["token"] = read_token(args.pop("token_file"))
    for k in ("collection", "validation_set", "experiments_db", "model_state"):
        if k in args and args[k] is not None:
            args[k] = Path(args[k])
    if "model_roots" in args:
        args["model_roots"] = tuple(Path(p) for p in args["model_roots"])
    known = {f.name for f in dataclasses.fields(ServerSettings)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidArgument(
            f"unknown setting(s) {unknown} in the application's args: ServerSettings fields, "
            "replicas, replica_cpus, target_ongoing_requests, ingress_replicas, ingress_cpus, "
            "split, grace_ms, token_file"
        )
    settings = ServerSettings(**args)
    return serve_app(settings, IngressOptions(scaling=scaling, **opts))


def scaling_from(
    replicas: str, *, replica_cpus: float = 1.0, target_ongoing_requests: float = 2.0
) -> Scaling:
    """``"2"``: two replicas; ``"1-4"``: autoscaled between one and four.

    >>> scaling_from("1-4").deployment_options()["autoscaling_config"]["max_replicas"]
    4
    """
    lo, dash, hi = replicas.partition("-")
    try:
        low = int(lo)
        high = int(hi) if dash else low
    except ValueError:
        raise InvalidArgument(f"replicas must be N or MIN-MAX, not {replicas!r}") from None
    return Scaling(
        low,
        high,
        target_ongoing_requests=target_ongoing_requests,
        replica_cpus=replica_cpus,
    )


def run(
    settings: ServerSettings,
    options: IngressOptions,
    *,
    address: str,
    app: str = APP,
) -> int:
    """``twostage serve --ray ADDRESS``: connect (``local``: a new local cluster; ``auto``:
    the one this machine runs), deploy, serve until SIGINT/SIGTERM, then delete the
    application (and shut the cluster down if it started it)."""
    require_ray()
    import ray
    from ray import serve

    local = address == "local"
    # "local" always starts a new cluster here (None would join one RAY_ADDRESS names).
    extra: dict[str, Any] = {"include_dashboard": False} if local else {}
    ray.init(address=address, namespace="twostage", log_to_driver=True, **extra)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(serve_app(settings, options), name=app, route_prefix="/")
        print(
            f"twostage: serving {settings.collection} on http://{settings.host}:{settings.port} "
            f"(Ray application {app!r}: ingress + reranker replicas)",
            flush=True,
        )
        stop.wait()
    finally:
        try:
            serve.delete(app)
        finally:
            from twostage.distributed.rollout import forget

            forget(app)
            if local:
                serve.shutdown()
                ray.shutdown()
    return 0


__all__ = ["APP", "Ingress", "IngressOptions", "build", "run", "scaling_from", "serve_app"]
