"""service/admin.py: the admin endpoint's token."""

from __future__ import annotations

from fastapi.testclient import TestClient
from support import AUTH, TOKEN

from service.config import Settings
from service.main import create_app


def test_admin_endpoints_need_the_token(exported, tmp_path):
    with TestClient(create_app(Settings(model_dir=exported))) as c:
        r = c.post("/admin/reload")
        assert r.status_code == 403 and "RANKER_ADMIN_TOKEN" in r.json()["error"]["message"]
    with TestClient(create_app(Settings(model_dir=exported.parent, admin_token=TOKEN))) as c:
        assert c.post("/admin/reload").status_code == 401
        r = c.post("/admin/reload", headers={"authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/admin/reload", headers=AUTH, json={"path": "../../etc"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "path"
        r = c.post("/admin/reload", headers=AUTH, json={"path": "nothing-here"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "path"
        assert "names no folder" in r.json()["error"]["message"]
        assert c.post("/admin/reload", headers=AUTH).json()["status"] == "unchanged"
