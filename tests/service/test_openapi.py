"""service/openapi.py: the document is derived from the structs the service decodes."""

from __future__ import annotations


def test_the_documented_request_schema_is_the_decoders_own(client):
    """The OpenAPI document's /rank body is derived from the struct the service decodes: no
    second declaration to drift."""
    import msgspec

    from service.request import RankRequest

    doc = client.get("/openapi.json").json()["components"]["schemas"]
    _, derived = msgspec.json.schema_components(
        [RankRequest], ref_template="#/components/schemas/{name}"
    )
    for name, schema in derived.items():
        assert {k: v for k, v in doc[name].items() if k != "examples"} == schema, name
