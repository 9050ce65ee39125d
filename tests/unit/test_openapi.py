"""The OpenAPI document is generated from the app's routes and the pydantic models (no services)."""
from __future__ import annotations

import re

import pytest

from producer.app import create_app
from producer.openapi import ItemsPage, JobsPage, build_openapi
from producer.schemas import SubmitRequest


@pytest.fixture(scope="module")
def doc() -> dict:
    app = create_app()
    with app.app_context():
        return build_openapi(app)


def test_every_route_and_method_is_documented(doc):
    app = create_app()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{id}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            assert op["summary"] and op["operationId"] == rule.endpoint.replace(".", "_")


def test_the_submit_body_is_the_submit_model(doc):
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SubmitRequest"}
    published = doc["components"]["schemas"]["SubmitRequest"]
    assert published["properties"].keys() == SubmitRequest.model_json_schema()["properties"].keys()
    assert doc["paths"]["/v1/jobs"]["post"]["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Accepted"}


@pytest.mark.parametrize("path, model", [("/v1/jobs", JobsPage), ("/v1/jobs/{id}", ItemsPage)])
def test_query_parameters_are_the_models_the_views_parse_with(doc, path, model):
    params = {p["name"]: p["schema"] for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "query"}
    assert params == model.model_json_schema()["properties"]


def test_every_reference_resolves(doc):
    refs = re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', __import__("json").dumps(doc))
    assert refs and all(name in doc["components"][kind] for kind, name in refs)


def test_query_arguments_out_of_bounds_are_400_naming_the_argument():
    client = create_app().test_client()
    for query, name in (("limit=1e9", "limit"), ("offset=-1", "offset"), ("limit=0", "limit")):
        resp = client.get(f"/v1/jobs?{query}")
        assert resp.status_code == 400 and resp.json["error"]["field"] == name, resp.json
