"""One local HTTP server answering like the repository providers' public APIs, for resolver and
builder tests.

It serves the documented response shapes of each API the resolver calls (GitHub commits and
gists with ETag/If-None-Match and 304, GitLab commits, the DOI resolver's redirects, Zenodo
records, Figshare article versions, Dataverse datasets, HydroShare science metadata, CKAN
package_show, Software Heritage revisions/directories), plus the failure modes that matter: 404,
422, 5xx, rate limits (GitHub 403 + X-RateLimit-Remaining: 0, 429 + Retry-After), redirects,
and a host that never answers. For the builder's content providers it also serves records' files
as repo2docker's providers download them: Zenodo's files listing and content links, Figshare's
article version with download URLs, Dataverse's dataset files and datafile access, CKAN
resources, Software Heritage's vault (POST to cook a directory, then its tar.gz). Every request
is recorded (path as sent, headers) so tests can check quoting, tokens and how often a provider
was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

BINDERHUB_PROVIDERS = frozenset(
    {"gh", "gl", "gist", "git", "zenodo", "figshare", "dataverse", "hydroshare", "ckan", "swhid"}
)
"""The provider ids BinderHub launches from: Bindery's catalogue must offer exactly these."""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class FakeProviders:
    """Fill the tables, `await start()`, point the resolver's base URLs at `url(...)`."""

    github_refs: dict[str, dict[str, str]] = field(default_factory=dict)
    """"owner/repo" -> {ref or "HEAD": sha}."""
    github_moved: dict[str, str] = field(default_factory=dict)
    """"old/name" -> "new/name": answered with 301 like a renamed repository."""
    gists: dict[str, dict[str, Any]] = field(default_factory=dict)
    gitlab_refs: dict[str, dict[str, str]] = field(default_factory=dict)
    dois: dict[str, str] = field(default_factory=dict)
    """DOI -> landing URL the resolver redirects to."""
    zenodo_records: dict[str, int] = field(default_factory=dict)
    """record id -> the id the API answers with (a concept id redirects to its latest)."""
    zenodo_files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """record id -> {file key: content}: the record's files listing and downloads."""
    figshare_files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """"<article>.v<version>" -> {file name: content}."""
    figshare_versions: dict[str, list[int]] = field(default_factory=dict)
    dataverse: dict[str, dict[str, Any]] = field(default_factory=dict)
    """"doi:..." -> data block."""
    dataverse_files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """"doi:..." -> {"dir/name" or "name": content}: the latest version's files."""
    hydroshare_modified: dict[str, str] = field(default_factory=dict)
    ckan_modified: dict[str, str] = field(default_factory=dict)
    ckan_resources: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """dataset id -> its resources ({"id", "url"}) as package_show lists them."""
    downloads: dict[str, bytes] = field(default_factory=dict)
    """path under /files/ -> content: whatever a resource URL points to."""
    swh_objects: set[str] = field(default_factory=set)
    """"revision/<hash>" or "directory/<hash>"."""
    swh_directories: dict[str, list[tarfile.TarInfo | tuple[str, bytes]]] = field(
        default_factory=dict
    )
    """directory hash -> the vault's archive: files (name, content) or raw members (links)."""
    rate_limited: set[str] = field(default_factory=set)
    """Services ("github", "gitlab", "swh") currently answering with their rate-limit reply."""
    broken: set[str] = field(default_factory=set)
    """Services currently answering 502."""
    silent: set[str] = field(default_factory=set)
    """Services that accept the request and never answer."""
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", r"/{tail:.*}", self._dispatch)
        # Software Heritage's vault is asked to cook a directory with a POST.
        app.router.add_route("POST", r"/swh/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        self.seen.append(Seen(request.raw_path, dict(request.headers)))
        # Dataverse serves its API from the site root, next to its landing pages.
        service = (
            "dataverse"
            if path.startswith(("/api/datasets/", "/api/access/"))
            else path.split("/", 2)[1]
        )
        if service in self.silent:
            await self._release.wait()
            return web.Response(status=503)
        if service in self.broken:
            return web.Response(status=502, text="Bad gateway")
        handler = {
            "github": self._github,
            "gitlab": self._gitlab,
            "doi": self._doi,
            "zenodo": self._zenodo,
            "figshare": self._figshare,
            "dataverse": self._dataverse,
            "hydroshare": self._hydroshare,
            "ckan": self._ckan,
            "swh": self._swh,
            "files": self._files,
        }.get(service)
        if handler is None:
            return web.Response(status=404)
        return await handler(request, path.split("/")[2:])

    # --- GitHub: /github/repos/{owner}/{repo}/commits/{ref}, /github/gists/{id} ---

    def _github_limited(self) -> web.Response:
        reset = int(time.time()) + 600
        return _json(
            {"message": "API rate limit exceeded for 127.0.0.1."},
            403,
            {
                "X-RateLimit-Limit": "60",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset),
            },
        )

    async def _github(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if "github" in self.rate_limited:
            return self._github_limited()
        limits = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4999"}
        if parts[:1] == ["gists"] and len(parts) == 2:
            gist = self.gists.get(unquote(parts[1]))
            if gist is None:
                return _json({"message": "Not Found"}, 404)
            body = {"id": parts[1], "public": gist["public"], "history": gist["history"]}
            return _etagged(request, body, limits)
        if len(parts) != 5 or parts[0] != "repos" or parts[3] != "commits":
            return _json({"message": "Not Found"}, 404)
        # GitHub matches owner and repository names case-insensitively.
        name = f"{unquote(parts[1])}/{unquote(parts[2])}".lower()
        if name in self.github_moved:
            target = f"/github/repos/{self.github_moved[name]}/commits/{parts[4]}"
            return _json({"message": "Moved Permanently", "url": target}, 301, {"Location": target})
        refs = self.github_refs.get(name)
        if refs is None:
            return _json({"message": "Not Found"}, 404)
        ref = unquote(parts[4])
        sha = refs.get(ref) or next((s for s in refs.values() if s.startswith(ref)), None)
        if sha is None:
            return _json({"message": f"No commit found for SHA: {ref}"}, 422)
        return _etagged(request, {"sha": sha, "commit": {"message": "m"}, "files": []}, limits)

    # --- GitLab: /gitlab/api/v4/projects/{ns}/repository/commits/{ref} ---

    async def _gitlab(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if "gitlab" in self.rate_limited:
            return _json(
                {"message": "429 Too Many Requests"},
                429,
                {"Retry-After": "120", "RateLimit-Reset": str(int(time.time()) + 120)},
            )
        if len(parts) != 7 or parts[:3] != ["api", "v4", "projects"]:
            return _json({"message": "404 Not Found"}, 404)
        refs = self.gitlab_refs.get(unquote(parts[3]))
        sha = refs.get(unquote(parts[6])) if refs is not None else None
        if sha is None:
            return _json({"message": "404 Commit Not Found"}, 404)
        return _etagged(request, {"id": sha, "short_id": sha[:8], "title": "t"}, {})

    # --- DOI resolver: /doi/{doi} -> 302 to the landing page ---

    async def _doi(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        doi = unquote("/".join(parts))
        landing = self.dois.get(doi)
        if landing is None:
            return web.Response(status=404, text="DOI Not Found")
        return web.Response(status=302, headers={"Location": landing}, text="")

    # --- Zenodo: /zenodo/api/records/{id}[/files[/{key}/content]] ---

    async def _zenodo(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if parts[:2] != ["api", "records"] or len(parts) not in (3, 4, 6):
            return web.Response(status=200, text="<html>landing page</html>")
        answer = self.zenodo_records.get(parts[2])
        if answer is None:
            return _json({"status": 404, "message": "PID does not exist."}, 404)
        if str(answer) != parts[2]:
            return web.Response(status=302, headers={"Location": f"/zenodo/api/records/{answer}"})
        files = self.zenodo_files.get(parts[2], {})
        api = self.url(f"/zenodo/api/records/{answer}")
        if len(parts) == 3:
            return _json(
                {
                    "id": answer,
                    "conceptrecid": "1",
                    "doi": f"10.5281/zenodo.{answer}",
                    "links": {"files": f"{api}/files"},
                    "metadata": {"upload_type": "software"},
                }
            )
        if len(parts) == 4 and parts[3] == "files":
            entries = [
                {
                    "key": key,
                    "size": len(body),
                    "links": {"content": f"{api}/files/{quote(key, safe='')}/content"},
                }
                for key, body in files.items()
            ]
            return _json({"enabled": True, "entries": entries})
        content = (
            files.get(unquote(parts[4])) if parts[3] == "files" and parts[5] == "content" else None
        )
        if content is None:
            return _json({"status": 404, "message": "The requested file does not exist."}, 404)
        return web.Response(body=content, content_type="application/octet-stream")

    # --- Figshare: /figshare/v2/articles/{id}/versions[/{v}], /figshare/ndownloader/{a.vN}/{name}

    async def _figshare(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if parts[:1] == ["ndownloader"] and len(parts) == 3:
            content = self.figshare_files.get(parts[1], {}).get(unquote(parts[2]))
            if content is None:
                return web.Response(status=404)
            return web.Response(body=content, content_type="application/octet-stream")
        if len(parts) == 5 and parts[:2] == ["v2", "articles"] and parts[3] == "versions":
            key = f"{parts[2]}.v{parts[4]}"
            if key not in self.figshare_files:
                return _json(
                    {"message": "Entity not found: article", "code": "EntityNotFound"}, 404
                )
            files = [
                {
                    "id": n,
                    "name": name,
                    "size": len(body),
                    "is_link_only": False,
                    "download_url": self.url(f"/figshare/ndownloader/{key}/{quote(name, safe='')}"),
                }
                for n, (name, body) in enumerate(self.figshare_files[key].items())
            ]
            return _json({"id": int(parts[2]), "version": int(parts[4]), "files": files})
        if len(parts) != 4 or parts[:2] != ["v2", "articles"] or parts[3] != "versions":
            return _json({"message": "Not found", "code": "NotFound"}, 404)
        versions = self.figshare_versions.get(parts[2])
        if versions is None:
            return _json({"message": "Entity not found: article", "code": "EntityNotFound"}, 404)
        return _json(
            [
                {"version": v, "url": f"{self.url()}/v2/articles/{parts[2]}/versions/{v}"}
                for v in versions
            ]
        )

    # --- Dataverse: /dataverse/api/datasets/:persistentId?persistentId=doi:... ---

    async def _dataverse(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if parts[:2] == ["access", "datafile"] and len(parts) == 3:
            found = self._dataverse_file(int(parts[2])) if parts[2].isdigit() else None
            if found is None:
                return _json({"status": "ERROR", "message": "File not found"}, 404)
            return web.Response(body=found, content_type="application/octet-stream")
        pid = request.query.get("persistentId", "")
        data = self.dataverse.get(pid)
        if data is None:
            return _json(
                {"status": "ERROR", "message": f"Dataset with Persistent ID {pid} not found."},
                404,
            )
        files = [
            {
                "label": path.rpartition("/")[2],
                **({"directoryLabel": path.rpartition("/")[0]} if "/" in path else {}),
                "dataFile": {"id": self._dataverse_file_id(pid, path), "filename": path},
            }
            for path in self.dataverse_files.get(pid, {})
        ]
        if files:
            data = {**data, "latestVersion": {**data.get("latestVersion", {}), "files": files}}
        return _json({"status": "OK", "data": data})

    def _dataverse_file_id(self, pid: str, path: str) -> int:
        return 1000 + [(p, f) for p in self.dataverse_files for f in self.dataverse_files[p]].index(
            (pid, path)
        )

    def _dataverse_file(self, file_id: int) -> bytes | None:
        every = [body for files in self.dataverse_files.values() for body in files.values()]
        return every[file_id - 1000] if 0 <= file_id - 1000 < len(every) else None

    # --- HydroShare: /hydroshare/hsapi/resource/{id}/scimeta/elements ---

    async def _hydroshare(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        modified = self.hydroshare_modified.get(parts[2]) if len(parts) == 5 else None
        if modified is None:
            return _json({"detail": "No resource was found for resource id"}, 404)
        dates = [
            {"type": "created", "start_date": "2019-01-01T00:00:00.000000Z"},
            {"type": "modified", "start_date": modified},
        ]
        return _json({"title": "t", "dates": dates})

    # --- CKAN: /ckan/<site prefix>/api/3/action/package_show?id=... ---

    async def _ckan(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if parts[-1:] != ["package_show"]:
            return _json({"success": False, "error": {"message": "Not found"}}, 404)
        modified = self.ckan_modified.get(request.query.get("id", ""))
        if modified is None:
            error = {"message": "Not found", "__type": "Not Found Error"}
            return _json({"success": False, "error": error}, 404)
        result = {
            "id": "0f3c",
            "name": request.query["id"],
            "metadata_modified": modified,
            "resources": self.ckan_resources.get(request.query["id"], []),
        }
        return _json({"help": "...", "success": True, "result": result})

    # --- Software Heritage: /swh/api/1/{revision|directory}/{hash}/ ---

    async def _swh(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if "swh" in self.rate_limited:
            return _json(
                {"exception": "Throttled", "reason": "Request was throttled."},
                429,
                {"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "0", "Retry-After": "30"},
            )
        if parts[2:4] == ["vault", "directory"] and len(parts) >= 5:
            return self._swh_vault(parts[4], raw=parts[5:6] == ["raw"])
        key = "/".join(parts[2:4])
        if key not in self.swh_objects:
            return _json({"exception": "NotFoundExc", "reason": f"{key} not found"}, 404)
        return _json({"id": parts[3], "directory": "d" * 40})

    def _swh_vault(self, directory: str, raw: bool) -> web.Response:
        members = self.swh_directories.get(directory)
        if members is None:
            return _json({"exception": "NotFoundExc", "reason": "directory not found"}, 404)
        if not raw:
            fetch_url = self.url(f"/swh/api/1/vault/directory/{directory}/raw/")
            return _json({"id": 1, "status": "done", "fetch_url": fetch_url})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for member in members:
                if isinstance(member, tarfile.TarInfo):
                    tar.addfile(member)
                    continue
                name, body = member
                info = tarfile.TarInfo(f"{directory}/{name}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        return web.Response(body=archive.getvalue(), content_type="application/gzip")

    # --- Plain downloads (CKAN resources point anywhere): /files/{path} ---

    async def _files(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        content = self.downloads.get(unquote("/".join(parts)))
        if content is None:
            return web.Response(status=404)
        return web.Response(body=content, content_type="application/octet-stream")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _etagged(request: web.Request, body: Any, headers: dict[str, str]) -> web.Response:
    text = json.dumps(body)
    etag = f'W/"{hashlib.sha256(text.encode()).hexdigest()[:32]}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, **headers})
    return web.Response(
        text=text, content_type="application/json", headers={"ETag": etag, **headers}
    )
