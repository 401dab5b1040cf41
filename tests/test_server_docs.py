"""/docs works offline: Swagger UI's files are served by the server itself, not a CDN."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("swagger_ui_bundle")

from fastapi.testclient import TestClient
from twostage.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No lifespan (no `with`): the docs need no collection or model.
    folder = tmp_path_factory.mktemp("docs") / "col"
    return TestClient(create_app(ServerSettings(collection=folder, insecure_no_auth=True)))


def test_docs_reference_only_local_assets_and_they_are_served(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(
        r"""url:\s*['"]([^'"]+)['"]""", html
    )
    assert urls, html
    # Nothing from elsewhere: every URL is a path on this server.
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in html and "https://" not in html
    kinds = {
        ".js": "javascript",
        ".css": "text/css",
        ".png": "image/png",
        ".json": "application/json",
    }
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200, url
        want = kinds[Path(url).suffix]
        assert want in r.headers["content-type"], (url, r.headers["content-type"])
        assert len(r.content) > 100
    assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("swagger-ui.css") for u in urls)
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text[:200_000]


def test_no_redoc_and_docs_outside_the_schema(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
