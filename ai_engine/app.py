"""The aiohttp application factory: routes, middlewares, lifecycle."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ai_engine.api import problems
from ai_engine.api.openapi import openapi_document
from ai_engine.api.routes import routes
from ai_engine.api.sync import sync_routes
from ai_engine.config import Settings
from ai_engine.engine import ENGINE, Engine

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/health"})


def signed_asset(request: web.Request) -> bool:
    """A local asset URL with a valid signature needs no token (like a presigned URL)."""
    if not request.path.startswith("/assets/"):
        return False
    verify = getattr(request.app[ENGINE].storage, "verify_signature", None)
    return bool(verify and verify(request.path[len("/assets/"):],
                                  request.query.get("expires", ""),
                                  request.query.get("signature", "")))


def auth_middleware(tokens: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    encoded = [t.encode() for t in tokens]

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if encoded and request.path not in PUBLIC_PATHS and not signed_asset(request):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            given = token.strip().encode()
            # compare against every token so the time taken says nothing about which matched
            matched = [hmac.compare_digest(given, t) for t in encoded]
            if scheme.lower() != "bearer" or not any(matched):
                raise problems.unauthorized()
        return await handler(request)

    return check_token


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    engine = request.app[ENGINE]
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except problems.ApiProblem as exc:
        response = exc.response()
    except web.HTTPRequestEntityTooLarge:
        response = problems.too_large(engine.settings.max_body_bytes).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problems.ApiProblem(exc.status, exc.reason, exc.text or exc.reason,
                                       slug=exc.reason.lower().replace(" ", "-")).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = problems.ApiProblem(500, "Internal error", "unexpected error; it is logged",
                                       slug="internal").response()
    engine.metrics.http_requests.labels(route=name, status=str(response.status)).inc()
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def create_app(settings: Settings, *, run_executors: bool = True) -> web.Application:
    """Build the service. ``run_executors=False`` gives an API-only process."""
    engine = Engine(settings, run_executors=run_executors)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[problem_middleware, auth_middleware(settings.api_tokens)])
    app[ENGINE] = engine
    app.add_routes(routes)
    app.add_routes(sync_routes)
    app.router.add_get("/openapi.json", openapi)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.stop()

    app.cleanup_ctx.append(lifecycle)

    async def on_shutdown(_: web.Application) -> None:
        engine.state = "draining"  # refuse new work at once; the drain runs at cleanup

    app.on_shutdown.append(on_shutdown)
    return app
