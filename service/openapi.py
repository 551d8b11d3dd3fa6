"""The OpenAPI document, derived from the structs the service really decodes and encodes.

Endpoints that read their own bodies (for speed, or to check a token first) name their schemas
here by reference; `install_openapi` puts every schema into the document's components from the
msgspec declarations the app gives it (main.py names them), so the document is what the code
does.
"""

from __future__ import annotations

import msgspec
from fastapi import FastAPI

REF = "#/components/schemas/{name}"


def json_body(name: str, description: str = "OK") -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(name=name)}}},
    }


def body_schema(name: str, required: bool = True) -> dict:
    """openapi_extra for an endpoint whose request body is the struct `name`."""
    return {"requestBody": {"required": required, **json_body(name)}}


def error_docs(statuses: dict[int, str]) -> dict:
    return {status: json_body("ErrorResponse", why) for status, why in statuses.items()}


def install_openapi(app: FastAPI, structs: list[type], examples: dict[str, dict]) -> None:
    """Every struct in `structs` becomes a schema of the document's components, named by its
    class; `examples` adds an example to the schema it names."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = original()
            _, components = msgspec.json.schema_components(structs, ref_template=REF)
            for name, example in examples.items():
                components[name]["examples"] = [example]
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
