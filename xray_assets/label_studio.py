"""Label Studio as the annotation loop's tool: the service (its own virtual environment, started by
`make annotate`, offline, on 127.0.0.1) and a small client of its REST API (httpx; its SDK pins
libraries the project's lock cannot take).

Where it lives is decided in `layout`: its database and `service.json` under
`<storage_dir>/label-studio/`, and local files served from the storage root itself
(`layout.label_studio_document_root`), so every profile's batch images are under it.

Its admin and API token: `XRAY_LABEL_STUDIO_USER`, `XRAY_LABEL_STUDIO_PASSWORD` and
`XRAY_LABEL_STUDIO_TOKEN` when all three are set; otherwise the ones `make annotate` generated at its
first start and stored in `service.json` (readable by its owner only). The pipeline finds the service
at `XRAY_LABEL_STUDIO_URL` with `XRAY_LABEL_STUDIO_TOKEN`, else through `service.json`, so `make ui`
needs no variable once `make annotate` has run. Nothing here logs a password or a token.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .core import atomic, layout

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


#: the service's default port (`make annotate`, `xray-assets annotate --port`)
DEFAULT_PORT = 8090
#: the admin `make annotate` creates when no XRAY_LABEL_STUDIO_USER is given
DEFAULT_USER = "admin@xray-assets.localhost"
CREDENTIAL_ENV = ("XRAY_LABEL_STUDIO_USER", "XRAY_LABEL_STUDIO_PASSWORD", "XRAY_LABEL_STUDIO_TOKEN")


@dataclass(frozen=True)
class Service:
    """Where the service answers and who may use it (`service.json`; the secrets never in a repr)."""

    url: str
    user: str
    password: str = field(repr=False)
    token: str = field(repr=False)  # Label Studio's legacy API token: 40 hex digits
    origin: str = ""  # where the credentials came from, for messages ("environment" or the file)


def service_file(storage_dir) -> Path:
    return layout.label_studio_document_root(storage_dir).joinpath(*layout.LABEL_STUDIO_SERVICE)


def stored_service(storage_dir) -> Service | None:
    """The service `make annotate` recorded under this storage root, if any."""
    path = service_file(storage_dir)
    if not path.is_file():
        return None
    got = json.loads(path.read_text())
    return Service(**{k: got[k] for k in ("url", "user", "password", "token")}, origin=str(path))


def service_for(storage_dir, port: int = DEFAULT_PORT, environ=None) -> Service:
    """The service `make annotate` starts on this storage root: its credentials from the
    environment when all three variables are set, else those stored at an earlier start, else new
    ones (a random password and a 40-hex-digit token); recorded in `service.json` with its URL, so
    the pipeline finds it. (Label Studio takes the admin and the token at its first start only: the
    stored ones are kept as long as its database is.)"""
    environ = os.environ if environ is None else environ
    url = f"http://127.0.0.1:{port}"
    given = [environ.get(k, "") for k in CREDENTIAL_ENV]
    if all(given):
        user, password, token = given
        origin = "environment (XRAY_LABEL_STUDIO_USER, _PASSWORD, _TOKEN)"
    elif (old := stored_service(storage_dir)) is not None:
        user, password, token, origin = old.user, old.password, old.token, old.origin
    else:
        user, password, token = DEFAULT_USER, secrets.token_urlsafe(18), secrets.token_hex(20)
        origin = str(service_file(storage_dir))
    service = Service(url, user, password, token, origin)
    record = {k: v for k, v in asdict(service).items() if k != "origin"}
    # readable and writable by its owner only: it holds a password and a token
    atomic.write_text(service_file(storage_dir), json.dumps(record, indent=1), mode=0o600)
    return service


def connection(url: str, token: str, storage_dir) -> tuple[str, str, str]:
    """(url, token, where they came from) the pipeline uses: the given ones (XRAY_LABEL_STUDIO_URL
    and XRAY_LABEL_STUDIO_TOKEN) when both are set, else the service `make annotate` recorded under
    the storage root; ("", "", why not) when neither."""
    if url and token:
        return url, token, "XRAY_LABEL_STUDIO_URL"
    if url or token:
        missing = "XRAY_LABEL_STUDIO_TOKEN" if url else "XRAY_LABEL_STUDIO_URL"
        return "", "", f"{missing} is not set (both or neither)"
    if "://" in str(storage_dir):
        return "", "", "no XRAY_LABEL_STUDIO_URL, and the storage root is not a local folder"
    found = stored_service(storage_dir)
    if found is None:
        return (
            "",
            "",
            f"no Label Studio: `make annotate` has not run on this storage root ({service_file(storage_dir)} "
            "is missing) and XRAY_LABEL_STUDIO_URL is not set",
        )
    return found.url, found.token, found.origin


def service_env(data_dir: Path, document_root: Path | str, token: str) -> dict[str, str]:
    """The environment the service runs with: offline, its data folder, local files served from
    the storage root (`layout.label_studio_document_root`), the admin's token for API access."""
    return {
        **OFFLINE_ENV,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_USER_TOKEN": token,
        "DJANGO_DB": "sqlite",
    }


def launch(venv: Path, storage_dir, port: int = DEFAULT_PORT, environ=None):
    """(command line, environment, service) of Label Studio on this storage root, as `make annotate`
    starts it (the tests start it through this too): its database under the storage root's
    `label-studio/`, local files from the storage root."""
    environ = dict(os.environ if environ is None else environ)
    service = service_for(storage_dir, port, environ)
    home = layout.label_studio_document_root(storage_dir).joinpath(*layout.LABEL_STUDIO_HOME)
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **environ,
        **service_env(data, layout.label_studio_document_root(storage_dir), service.token),
    }
    cmd = start_command(venv, data, port, service.user, service.password, service.token)
    return cmd, env, service


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
        """The project's id, created when no project has this title (an existing one gets this
        labelling interface when its own differs: a newer release's header)."""
        page = self._call("GET", "/api/projects", params={"title": title, "page_size": 1000})
        for p in page.get("results", page) if isinstance(page, dict) else page:
            if p.get("title") == title:
                if p.get("label_config") and p["label_config"] != label_config:
                    self._call(
                        "PATCH", f"/api/projects/{p['id']}", json={"label_config": label_config}
                    )
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


def document_url(path: Path | str, storage_dir) -> str:
    """An image's local-files URL, relative to the service's document root (the storage root:
    `layout.label_studio_document_root`)."""
    root = layout.label_studio_document_root(storage_dir)
    try:
        rel = Path(path).resolve().relative_to(root)
    except ValueError:
        raise LabelStudioError(
            f"{path} is not under {root}, the folder Label Studio serves files from"
        ) from None
    return LOCAL_FILES_PREFIX + rel.as_posix()
