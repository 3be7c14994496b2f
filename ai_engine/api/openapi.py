"""The OpenAPI 3.1 document, generated from the pydantic models of ``schemas``."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ai_engine import __version__
from ai_engine.api.schemas import JobAccepted, JobRequest, JobView, Problem, WebhookEvent

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _ref(Problem)}}}


def _job_path_param() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation" if m is JobRequest else "serialization")
         for m in (JobRequest, JobAccepted, JobView, Problem, WebhookEvent)],
        ref_template=REF)
    errors = {"400": _problem("malformed body"), "401": _problem("missing or wrong token"),
              "413": _problem("body too large"), "422": _problem("invalid fields, all listed"),
              "429": _problem("queue full (see Retry-After)"),
              "503": _problem("not ready or draining")}
    create = {
        "summary": "Accept one image-to-3D job",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref(JobRequest)}}},
        "responses": {"202": _json(JobAccepted, "accepted"),
                      "200": _json(JobView, "the existing job for this idempotency key"),
                      "409": _problem("same key, different body"), **errors},
    }
    get_job = {"summary": "A job", "parameters": [_job_path_param()],
               "responses": {"200": _json(JobView, "the job"), "404": _problem("unknown id")}}
    events = {"summary": "Server-sent events of a job until it ends",
              "parameters": [_job_path_param()],
              "responses": {"200": {"description": "event stream",
                                    "content": {"text/event-stream": {"schema": {
                                        "type": "string"}}}},
                            "404": _problem("unknown id")}}
    cancel = {"summary": "Cancel a job", "parameters": [_job_path_param()],
              "responses": {"202": _json(JobView, "canceled, or canceling at the next stage"),
                            "404": _problem("unknown id"), "409": _problem("already ended")}}
    plain = {"responses": {"200": {"description": "OK"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ai_engine", "version": __version__,
                 "description": "Image-to-3D jobs: HTTP in, signed webhooks and 3D assets out."},
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "webhooks": {"assetEvent": {"post": {"requestBody": {"content": {
            "application/json": {"schema": _ref(WebhookEvent)}}},
            "responses": {"200": {"description": "received"}}}}},
        "paths": {
            "/generate-3d": {"post": create},
            "/v1/jobs": {"post": create},
            "/v1/jobs/{job_id}": {"get": get_job},
            "/v1/jobs/{job_id}/events": {"get": events},
            "/v1/jobs/{job_id}/cancel": {"post": cancel},
            "/healthz": {"get": {"summary": "Liveness", "security": [], **plain}},
            "/readyz": {"get": {"summary": "Readiness", "security": [], **plain}},
            "/metrics": {"get": {"summary": "Prometheus metrics", **plain}},
            "/assets/{key}": {"get": {"summary": "Local asset download",
                                      "parameters": [{"name": "key", "in": "path",
                                                      "required": True,
                                                      "schema": {"type": "string"}}],
                                      **plain}},
        },
    }
