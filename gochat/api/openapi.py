"""The OpenAPI 3.1 document of the server API, made once from its route table and models.

The schemas are pydantic's (`model_json_schema`, JSON Schema 2020-12, which OpenAPI 3.1
uses as is), gathered under components/schemas; the paths come from the same table the
router is built from, so the document cannot list a route the server does not have.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .models import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted: sent to the node that holds the connection",
    400: "Refused: see `error` (bad_json, bad_message, bad_room, too_long)",
    401: "Missing or wrong API key",
    404: "No such connection (or node)",
    413: "Body over GOCHAT_MAX_FRAME bytes (`too_long`)",
    429: "Too many failed key attempts from this address: wait Retry-After seconds",
    503: "The broker (Redis) cannot serve the request now: retry later",
}


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Endpoint:
    """One route: what the router serves and what the document says of it."""

    method: Literal["GET", "POST"]
    path: str  # aiohttp's pattern, under the sub-app: "/rooms/{room}/messages"
    handler: Handler
    summary: str
    response: type[BaseModel]
    statuses: tuple[int, ...] = (200,)  # its answers with `response`
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""

    @property
    def doc_path(self) -> str:
        """The path as OpenAPI writes it: no regular expressions in its parameters."""
        return _PARAM.sub(r"{\1}", self.path)

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)


def document(
    endpoints: list[Endpoint], prefix: str, version: str, description: str
) -> dict[str, Any]:
    """The OpenAPI document of `endpoints`, mounted at `prefix`."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ApiError, "serialization")]
    for ep in endpoints:
        models.append((ep.response, "serialization"))
        if ep.body is not None:
            models.append((ep.body, "validation"))
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def content(schema: dict[str, Any]) -> dict[str, Any]:
        return {"application/json": {"schema": schema}}

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ep.path_params
        ]
        params += [
            {"name": q.name, "in": "query", "required": False, "schema": q.schema}
            | {"description": q.description}
            for q in ep.query
        ]
        responses: dict[str, Any] = {
            str(status): {
                "description": STATUS_TEXT[status],
                "content": content(ref(ep.response, "serialization")),
            }
            for status in ep.statuses
        }
        for status in sorted({*ep.errors, 401, 429}):
            responses[str(status)] = {
                "description": STATUS_TEXT[status],
                "content": content(ref(ApiError, "serialization")),
            }
        op: dict[str, Any] = {
            "operationId": ep.handler.__name__,
            "summary": ep.summary,
            "responses": responses,
        }
        if ep.description:
            op["description"] = ep.description
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": ep.body_required,
                "content": content(ref(ep.body, "validation")),
            }
        paths.setdefault(prefix + ep.doc_path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "gochat server API", "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }
