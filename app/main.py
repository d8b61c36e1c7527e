"""The FastAPI application: wiring of settings, Redis, models, routers and error handling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import sys
from collections.abc import AsyncIterator

import torch
from fastapi import Depends, FastAPI
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError
from rq.registry import StartedJobRegistry
from starlette.concurrency import run_in_threadpool

from app.admission import make_gates
from app.auth import ApiKeys, authenticate
from app.body_limit import BodyLimitMiddleware
from app.contract import install_contract
from app.cors import install_cors
from app.fleet import fleet_status, forget_dead_workers, heartbeat_window_s
from app.form_body import require_form_body
from app.head_requests import HeadAsGetMiddleware
from app.job_wait import WaitSlots
from app.metrics import (
    CallbackCollector,
    HttpMetrics,
    MetricsMiddleware,
    fleet_families,
    gate_families,
    job_duration_family,
)
from app.problems import PROBLEM_TYPES, Problem, install_problem_handlers, problem_response
from app.repeated_fields import reject_repeated_fields
from app.request_id import RequestIdMiddleware
from app.routers import (
    classify,
    custom_styles,
    health,
    image_jobs,
    job_events,
    job_list,
    job_preview,
    jobs,
    live,
    stylize,
    video_jobs,
    web,
)
from app.routers.jobs import job_links
from app.routers.webhook_docs import document_webhooks
from app.webhook_dispatcher import WebhookDispatcher
from core.queue import make_queue
from core.redis_conn import connect
from core.settings import Settings, get_settings
from core.store import JobKeys

log = logging.getLogger(__name__)

DESCRIPTION = """
Neural style transfer and CIFAR-10 classification over HTTP.

* **POST /stylize** – fast feed-forward style transfer, synchronous: a named style network (Johnson et
  al. 2016) or any painting sent as `style_image` (Ghiasi et al. 2017 arbitrary-style model).
* **POST /jobs/stylize-image** – the same named styles on photos up to 4096 px by default (a queued job: the
  worker paints tile by tile with the whole photo's statistics, seamless).
* **POST /classify** – CIFAR-10 top-k classification, synchronous.
* **POST /styles** – train a new fast style from a painting (a queued job that learns one style
  code of the network); it is then served by **POST /stylize** like the others, listed by
  **GET /styles** (status `custom`), and removed with **DELETE /styles/{name}**.
* **POST /jobs/optimize** – slow, high-quality Gatys et al. optimization, run by queue workers; poll
  **GET /jobs/{id}** (or watch **GET /jobs/{id}/events**, server-sent events) and download
  **GET /jobs/{id}/result**.
* **WS /ws/stylize?style=NAME** – live webcam stylization over a WebSocket: send JPEG/WebP frames
  as binary messages, receive a JSON `frame` message and the stylized frame for the newest one
  (frames that arrive while the model is busy are dropped, never queued).
* **GET /** – a web page for all of the above.

Errors are RFC 9457 problem details (`application/problem+json`), each documented per operation
with its schema (`Problem`) and headers (`Retry-After` on 429/503/504, `WWW-Authenticate` on 401).

**API keys.** When the server is configured with keys (`ATELIER_API_KEYS`), every endpoint but the
health probes, the metrics, these docs and the web page needs `Authorization: Bearer <key>`; the
event stream also takes `?key=`, and the live WebSocket `?key=` or a `bearer.<key>` subprotocol.
Jobs belong to the key that submitted them: another key gets 404.

**Waiting.** Job requests take `Prefer: wait=N` (RFC 7240): **GET /jobs/{id}/result** answers once
the job has finished, **GET /jobs/{id}** and the submissions once it has ended, or after N seconds
(capped by the server) with the usual answer; `Preference-Applied` says the wait used.

**Webhooks.** Any job submission takes a `webhook_url`: once the job ends, its final status (the
body of **GET /jobs/{id}**) is POSTed there as a Standard Webhooks message (`webhook-id` = the job's
id, `webhook-timestamp`, and `webhook-signature` when the server has a secret), retried with backoff
until a 2xx answer. Public addresses only, unless the server allows others.

**Backpressure.** A job submitted while the queue is full gets 503, one over the key's quota of
unfinished jobs 429; `/classify` and `/stylize` answer 503 when too many requests already wait
for the model, and 504 when one passes the server's deadline. All with `Retry-After`.
"""


async def _reap_abandoned_jobs(app: FastAPI) -> None:
    """Periodically fail jobs whose worker died (stopped heartbeating), so none stays 'started',
    and unregister those dead workers, so no one counts them as alive."""
    registry = StartedJobRegistry(queue=app.state.queue)
    settings = app.state.settings
    while True:
        await asyncio.sleep(settings.reaper_interval_s)
        try:
            await run_in_threadpool(registry.cleanup)
            await run_in_threadpool(
                forget_dead_workers, app.state.redis, settings.queue_name, heartbeat_window_s(settings)
            )
        except RedisError as exc:
            log.debug("reaper: Redis unavailable (%s)", exc)
        except Exception:
            log.exception("reaper: unexpected error")


def _queue_collector(app: FastAPI) -> CallbackCollector:
    def collect():
        state = app.state
        depth = GaugeMetricFamily("atelier_queue_depth", "Jobs waiting in the queue.")
        try:
            depth.add_metric([], state.queue.count)
            raw = state.redis.hgetall(JobKeys(state.settings.key_prefix).job_stats)
            fleet = fleet_status(state.redis, state.settings)
        except RedisError:
            return []
        return [depth, job_duration_family(raw), *fleet_families(fleet)]

    return CallbackCollector(collect)


def _tune_interpreter(settings: Settings) -> None:
    """Interpreter settings for a busy API process, applied once the models are loaded.

    ``gc.freeze`` moves everything alive after start-up (torch, the models: several 100k objects)
    out of the collector's reach; otherwise each full collection walks them all and stalls the event
    loop for tens of milliseconds (measured: /classify p99 at c=32 fell from ~160 to ~70 ms).
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def _telemetry_option(enabled: bool) -> dict[str, object]:
    """FastAPI's built-in OpenTelemetry hooks look up providers on every request; off unless asked for.

    (We export our own Prometheus metrics. Older FastAPI releases have no ``telemetry`` argument.)
    """
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": enabled, "metrics": enabled, "logs": enabled}}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app; tests pass their own settings (own queue and key prefix)."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        await classify.startup(app)
        await stylize.startup(app)
        await custom_styles.startup(app)
        reaper = asyncio.create_task(_reap_abandoned_jobs(app))
        dispatcher = WebhookDispatcher(
            app.state.redis,
            settings,
            lambda job_id: job_links(app.url_path_for("get_job", job_id=job_id)),
            app.state.metrics.webhook_attempts,
        )
        webhook_sender = asyncio.create_task(dispatcher.run())
        _tune_interpreter(settings)
        try:
            yield
        finally:
            reaper.cancel()
            webhook_sender.cancel()
            await classify.shutdown(app)
            await stylize.shutdown(app)
            await custom_styles.shutdown(app)
            app.state.redis.close()

    app = FastAPI(
        title="Atelier",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(require_form_body), Depends(reject_repeated_fields)],
        **_telemetry_option(settings.opentelemetry),
    )
    app.state.settings = settings
    app.state.redis = connect(settings)
    app.state.queue = make_queue(settings, app.state.redis)
    app.state.ready_checks = {}
    app.state.job_waiters = WaitSlots(settings.job_waiters_max)
    app.state.api_keys = ApiKeys.from_settings(settings)
    app.state.model_gates = make_gates(
        settings.classify_max_pending, settings.stylize_max_pending, settings.request_deadline_s
    )
    app.state.metrics = HttpMetrics()
    app.state.metrics.registry.register(_queue_collector(app))
    app.state.metrics.registry.register(CallbackCollector(lambda: gate_families(app.state.model_gates)))
    if app.state.api_keys.enabled:
        log.info("API keys required (%d configured)", len(app.state.api_keys))

    install_problem_handlers(app)

    @app.exception_handler(RedisError)
    async def _redis_down(request, exc: RedisError):
        return problem_response(
            Problem(
                503,
                "service-unavailable",
                f"The job store (Redis) is unavailable: {exc}. Retry shortly.",
                headers={"Retry-After": "5"},
            ),
            request.url.path,
        )

    @app.get("/problems/{slug}", include_in_schema=False)
    async def problem_type(slug: str) -> dict[str, str]:
        if slug not in PROBLEM_TYPES:
            raise Problem(404, "not-found", f"No problem type '{slug}'.")
        title, explanation = PROBLEM_TYPES[slug]
        return {"type": f"/problems/{slug}", "title": title, "description": explanation}

    keyed = [Depends(authenticate)]  # routes that need the caller themselves declare it too (jobs)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(job_list.router)
    app.include_router(job_preview.router)
    app.include_router(video_jobs.router)
    app.include_router(image_jobs.router)
    app.include_router(job_events.router)
    app.include_router(classify.router, dependencies=keyed)
    app.include_router(stylize.router, dependencies=keyed)
    app.include_router(custom_styles.router, dependencies=keyed)
    app.include_router(live.router)
    app.include_router(web.router)
    web.mount_static(app)
    document_webhooks(app)
    install_contract(app)
    video_jobs.document_limits(app)
    app.add_middleware(HeadAsGetMiddleware)  # innermost: metrics and logs see a HEAD, the routes a GET
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost but CORS: every answer carries the id
    install_cors(app, settings)
    return app
