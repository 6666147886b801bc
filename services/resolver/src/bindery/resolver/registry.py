"""Ask the OCI registry whether an image exists (`HEAD /v2/<name>/manifests/<tag>`)."""

from __future__ import annotations

import aiohttp

from bindery.bus import Retry

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class Registry:
    def __init__(self, scheme: str, host: str) -> None:
        self._base = f"{scheme}://{host}"
        self.host = host
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self._http.close()

    async def image_exists(self, image: str) -> bool:
        """`image` is `<host>/<name>:<tag>`. Registry trouble is retryable, never a 'no'."""
        name, _, tag = image.removeprefix(f"{self.host}/").rpartition(":")
        url = f"{self._base}/v2/{name}/manifests/{tag}"
        try:
            async with self._http.head(url, headers={"Accept": _MANIFEST_TYPES}) as resp:
                if resp.status == 200:
                    return True
                if resp.status == 404:
                    return False
                raise Retry(f"registry answered {resp.status} for {name}:{tag}")
        except aiohttp.ClientError as exc:
            raise Retry(f"registry unreachable: {exc}") from exc
