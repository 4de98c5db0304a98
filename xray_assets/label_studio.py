"""Label Studio as the annotation loop's tool: the service (its own virtual environment, started by
`make annotate`, offline, on 127.0.0.1) and a small client of its REST API (httpx; its SDK pins
libraries the project's lock cannot take).

Settings (`config.ENV_DEFAULTS`): `XRAY_LABEL_STUDIO_URL`, the API token in
`XRAY_LABEL_STUDIO_TOKEN` (also given to the service as its admin's token at the first start; never
committed or logged), the admin's e-mail and password in `XRAY_LABEL_STUDIO_USER` /
`XRAY_LABEL_STUDIO_PASSWORD`. The service keeps its sqlite database under `.label-studio/` (git
ignored) and serves images as local files from the storage root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: a closed local port: whatever Label Studio still fetches from outside fails at once, with no
#: DNS look-up (its login page asks the server for "tips" from raw.githubusercontent.com, and no
#: setting turns that off; found by the tests' network guard inside the service)
DEAD_PROXY = "http://127.0.0.1:9"
#: without these Label Studio contacts its telemetry host on every API request, Sentry, and the
#: package index (measured for 1.23.2)
OFFLINE_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    **{k: DEAD_PROXY for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    **{k: "127.0.0.1,localhost" for k in ("NO_PROXY", "no_proxy")},
}
LOCAL_FILES_PREFIX = "/data/local-files/?d="


class LabelStudioError(RuntimeError):
    """A request Label Studio refused: the message names the call and its answer."""


def service_env(data_dir: Path, document_root: Path | str, token: str) -> dict[str, str]:
    """The environment the service runs with: offline, its data folder, local files served from
    the storage root, the admin's token for API access."""
    return {
        **OFFLINE_ENV,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USER_TOKEN": token,
        "DJANGO_DB": "sqlite",
    }


def start_command(venv: Path, data_dir: Path, port: int, user: str, password: str, token: str):
    """The service's command line (bound to 127.0.0.1: it binds 0.0.0.0 otherwise)."""
    return [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        user,
        "--password",
        password,
        "--user-token",
        token,
        "--enable-legacy-api-token",
    ]


@dataclass
class Client:
    """Label Studio's REST API with a token."""

    url: str
    token: str
    timeout_s: float = 60.0

    def _call(self, method: str, path: str, **kw):
        import httpx

        headers = {"Authorization": f"Token {self.token}"}
        r = httpx.request(
            method, f"{self.url.rstrip('/')}{path}", headers=headers, timeout=self.timeout_s, **kw
        )
        if r.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def project(self, title: str, label_config: str, description: str = "") -> int:
        """The project's id, created when no project has this title."""
        page = self._call("GET", "/api/projects", params={"title": title, "page_size": 1000})
        for p in page.get("results", page) if isinstance(page, dict) else page:
            if p.get("title") == title:
                return int(p["id"])
        created = self._call(
            "POST",
            "/api/projects",
            json={
                "title": title,
                "description": description,
                "label_config": label_config,
                "sampling": "Sequential sampling",
                "show_collab_predictions": True,
            },
        )
        return int(created["id"])

    def local_storage(self, project: int, folder: Path | str, title: str) -> int:
        """A local-files storage record for `folder` (Label Studio serves only folders it has one
        for); the tasks are imported by us, never synced from the folder."""
        for s in self._call("GET", "/api/storages/localfiles", params={"project": project}):
            if Path(s.get("path", "")) == Path(folder):
                return int(s["id"])
        made = self._call(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project,
                "path": str(folder),
                "title": title,
                "use_blob_urls": True,
                "regex_filter": r".*\.png$",
            },
        )
        return int(made["id"])

    def prelabel_with(self, project: int, model_version: str) -> None:
        """Show this model version's predictions as each new annotation's starting boxes (the
        project setting "use predictions to pre-label"; without it the editor starts empty)."""
        self._call(
            "PATCH",
            f"/api/projects/{project}",
            json={"model_version": model_version, "show_collab_predictions": True},
        )

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Tasks with their predictions, in order; returns the new tasks' ids."""
        got = self._call("POST", f"/api/projects/{project}/import", json=tasks)
        ids = got.get("task_ids") if isinstance(got, dict) else None
        return [int(i) for i in ids] if ids else []

    def tasks(self, project: int) -> list[dict]:
        out, page = [], 1
        while True:
            got = self._call(
                "GET", "/api/tasks", params={"project": project, "page": page, "page_size": 500}
            )
            items = got.get("tasks", []) if isinstance(got, dict) else got
            out += items
            if (
                not isinstance(got, dict)
                or len(out) >= int(got.get("total", len(out)))
                or not items
            ):
                return out
            page += 1

    def completed(self, project: int) -> list[int]:
        """Ids of the project's tasks with a submitted annotation."""
        return sorted(int(t["id"]) for t in self.tasks(project) if t.get("total_annotations"))

    def export(self, project: int) -> list[dict]:
        """Label Studio's own JSON export of the annotated tasks, with the predictions they were
        given expanded (an export snapshot, as the UI's Export makes; annotators by id only)."""
        import time

        made = self._call(
            "POST",
            f"/api/projects/{project}/exports",
            json={
                "title": "xray-assets pull",
                "serialization_options": {
                    "predictions": {"only_id": False},
                    "drafts": {"only_id": True},
                    "annotations__completed_by": {"only_id": True},
                },
                "task_filter_options": {"annotated": "only"},
            },
        )
        deadline = time.time() + self.timeout_s
        while made.get("status") != "completed":
            if made.get("status") == "failed" or time.time() > deadline:
                raise LabelStudioError(f"export {made.get('id')}: {made.get('status')}")
            time.sleep(0.5)
            made = self._call("GET", f"/api/projects/{project}/exports/{made['id']}")
        return self._call(
            "GET",
            f"/api/projects/{project}/exports/{made['id']}/download",
            params={"exportType": "JSON"},
        )


def document_url(path: Path | str, document_root: Path | str) -> str:
    """An image's local-files URL, relative to the service's document root."""
    rel = Path(path).resolve().relative_to(Path(document_root).resolve())
    return LOCAL_FILES_PREFIX + rel.as_posix()
