"""The OpenAPI 3.0 description of the receiver's HTTP surface, served at `GET /openapi.json`.

Written by hand from the endpoint and error tables of docs/contract.md (not generated from the code),
so that checking the service against it (tests/web/test_attack.py runs schemathesis over it)
compares the service with the contract rather than with itself. Error `type`s are listed
per status exactly as the contract pins them.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

JSONObject = dict[str, Any]


def error_schema(*types: str) -> JSONObject:
    """`{"error": {"type": T, "message": M}}` with `T` one of `types`."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string", "enum": list(types)},
                    "message": {"type": "string"},
                },
            }
        },
    }


def json_response(description: str, schema: JSONObject) -> JSONObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_response(description: str, *types: str) -> JSONObject:
    return json_response(description, error_schema(*types))


UNAVAILABLE = error_response(
    "Redis is unreachable or failing: nothing was stored; the sender retries", "unavailable"
)
TOO_LARGE = "the body is over the endpoint's limit (checked while it streams in)"
SIGNATURE_EXAMPLE = "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"

# Only `id` and `type` are checked; the other members are described but not constrained,
# because the receiver stores whatever else the envelope holds as it came.
EVENT = {
    "type": "object",
    "description": "An Osma event envelope; `id` and `type` are required, the rest is optional.",
    "required": ["id", "type"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "example": "evt_1MqL2x"},
        "type": {"type": "string", "minLength": 1, "example": "task.completed"},
        "object": {"description": "`event`", "example": "event"},
        "created_at": {
            "description": "ISO 8601; the period of a measurement comes from it",
            "example": "2026-11-20T10:00:00+00:00",
        },
        "live_mode": {"example": False},
        "data": {
            "description": '`{"object": <the task or member resource>}`',
            "example": {"object": {"id": "tsk_1", "object": "task", "template": "bp"}},
        },
    },
}

RECORD_ERROR = {
    "type": "object",
    "required": ["index", "field", "message"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "nullable": True},
        "field": {"type": "string", "nullable": True},
        "message": {"type": "string"},
    },
}

WEBHOOK = {
    "post": {
        "operationId": "receiveOsmaWebhook",
        "summary": "Receive one signed Osma event",
        "description": (
            "Checks run in this order and the first failure answers: body size, signature header "
            "present, header syntax, timestamp (tolerance both ways), signature (HMAC-SHA256 over "
            "`<t>.<raw body>`), JSON, envelope. A 2xx means the event and its jobs are stored."
        ),
        "parameters": [
            {
                "name": "osma-signature",
                "in": "header",
                "required": True,
                "description": "`t=<unix seconds>,v1=<hex HMAC-SHA256>`; several `v1=` entries may appear.",
                "schema": {"type": "string", "example": SIGNATURE_EXAMPLE},
            }
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": EVENT}}},
        "responses": {
            "202": json_response(
                "A new event: stored, one job queued per matching route",
                {
                    "type": "object",
                    "required": ["status", "id", "jobs"],
                    "properties": {
                        "status": {"type": "string", "enum": ["accepted"]},
                        "id": {"type": "string"},
                        "jobs": {"type": "integer", "minimum": 0},
                    },
                },
            ),
            "200": json_response(
                "An id already accepted: nothing queued",
                {
                    "type": "object",
                    "required": ["status", "id"],
                    "properties": {
                        "status": {"type": "string", "enum": ["duplicate"]},
                        "id": {"type": "string"},
                    },
                },
            ),
            "400": error_response(
                "The verified body is not a JSON object, or lacks a string `id` or `type`",
                "invalid_json",
                "invalid_envelope",
            ),
            "401": error_response(
                "The signature header is missing or malformed, its timestamp is outside "
                "the tolerance, or no `v1` matches a configured secret",
                "missing_signature",
                "malformed_signature",
                "timestamp_out_of_tolerance",
                "signature_mismatch",
            ),
            "408": error_response(
                "The body did not arrive within OSMA_ROUTER_BODY_TIMEOUT seconds", "request_timeout"
            ),
            "413": error_response(TOO_LARGE, "body_too_large"),
            "503": UNAVAILABLE,
        },
    }
}

OSMOS = {
    "post": {
        "operationId": "ingestOsmosBatch",
        "summary": "Receive one Osmos record or a batch of up to 250,000, accepted or rejected whole",
        "description": (
            "Each connector has its own auth header (name and value) and schema, set in the routes "
            "file. Checks: connector known (404), auth header (401), `Content-Type: application/json` "
            "(415), size (413), JSON (400), records (422, naming each bad field; nothing stored)."
        ),
        "parameters": [
            {
                "name": "connector",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "example": "crm"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "object"},
                            {"type": "array", "maxItems": 250_000, "items": {"type": "object"}},
                        ],
                    }
                }
            },
        },
        "responses": {
            "202": json_response(
                "The whole batch is stored",
                {
                    "type": "object",
                    "required": ["status", "records"],
                    "properties": {
                        "status": {"type": "string", "enum": ["accepted"]},
                        "records": {"type": "integer", "minimum": 0},
                    },
                },
            ),
            "400": error_response("The body is not JSON", "invalid_json"),
            "401": error_response("The connector's auth header is missing or wrong", "unauthorized"),
            "404": error_response("No connector of that name is configured", "unknown_connector"),
            "413": error_response(
                f"{TOO_LARGE}, or more than 250,000 records", "body_too_large", "too_many_records"
            ),
            "415": error_response("The body is not sent as application/json", "unsupported_media_type"),
            "422": json_response(
                "Records break the connector's schema; none of the batch was stored",
                {
                    **error_schema("invalid_records"),
                    "required": ["error", "records"],
                    "properties": {
                        **error_schema("invalid_records")["properties"],
                        "records": {"type": "array", "maxItems": 1000, "items": RECORD_ERROR},
                        "more": {"type": "integer", "minimum": 1},
                    },
                },
            ),
            "503": UNAVAILABLE,
        },
    }
}

SPEC: JSONObject = {
    "openapi": "3.0.3",
    "info": {
        "title": "osma-router receiver",
        "version": "1",
        "description": "Signed Osma webhooks and Osmos batches in; every error is "
        '`{"error": {"type": ..., "message": ...}}`.',
    },
    "paths": {
        "/webhooks/osma": WEBHOOK,
        "/ingest/osmos/{connector}": OSMOS,
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "The process is up",
                "responses": {
                    "200": json_response(
                        "Up",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"type": "string", "enum": ["ok"]}},
                        },
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Redis answers",
                "responses": {
                    "200": json_response(
                        "Ready",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"type": "string", "enum": ["ready"]}},
                        },
                    ),
                    "503": json_response(
                        "Redis does not answer",
                        {
                            **error_schema("unavailable"),
                            "required": ["status", "error"],
                            "properties": {
                                "status": {"type": "string", "enum": ["unavailable"]},
                                **error_schema("unavailable")["properties"],
                            },
                        },
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the whole service",
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "responses": {
                    "200": json_response("OpenAPI 3.0", {"type": "object", "required": ["openapi", "paths"]})
                },
            }
        },
    },
}

SPEC_JSON = orjson.dumps(SPEC)


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`."""
    return Response(SPEC_JSON, media_type="application/json")
