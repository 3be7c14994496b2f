"""problem+json (RFC 9457) errors; the only place that maps failures to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

PROBLEM_TYPE = "https://ai-engine.dev/problems/"


class ApiProblem(Exception):
    def __init__(self, status: int, title: str, detail: str, *, slug: str,
                 errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.errors = errors or []
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"type": PROBLEM_TYPE + self.slug, "title": self.title, "status": self.status,
                "detail": self.detail, "errors": self.errors}
        return web.Response(status=self.status, text=json.dumps(body),
                            content_type="application/problem+json", headers=self.headers)


def validation_problem(exc: ValidationError, *, prefix: tuple[str | int, ...] = ()
                       ) -> ApiProblem:
    """A 422 listing every invalid field of a pydantic validation error."""
    errors = []
    for e in exc.errors(include_url=False):
        loc = [*prefix, *e["loc"]] or ["body"]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        errors.append({"loc": loc, "msg": msg})
    return invalid(errors)


def invalid(errors: list[dict[str, Any]]) -> ApiProblem:
    count = len(errors)
    return ApiProblem(422, "Invalid request", f"{count} invalid field{'s' * (count != 1)}",
                      slug="invalid-request", errors=errors)


def bad_request(detail: str) -> ApiProblem:
    return ApiProblem(400, "Bad request", detail, slug="bad-request",
                      errors=[{"loc": ["body"], "msg": detail}])


def not_found(detail: str) -> ApiProblem:
    return ApiProblem(404, "Not found", detail, slug="not-found")


def unauthorized() -> ApiProblem:
    return ApiProblem(401, "Unauthorized", "missing or invalid bearer token",
                      slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def conflict(detail: str) -> ApiProblem:
    return ApiProblem(409, "Conflict", detail, slug="conflict")


def queue_full(retry_after_s: int) -> ApiProblem:
    return ApiProblem(429, "Queue full", "too many queued jobs; retry later", slug="queue-full",
                      headers={"Retry-After": str(retry_after_s)})


def unavailable(state: str) -> ApiProblem:
    return ApiProblem(503, "Service unavailable", f"the service is {state}",
                      slug="unavailable", headers={"Retry-After": "5"})


def too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, "Request body too large", f"the body exceeds {limit} bytes",
                      slug="too-large")
