"""repo2docker's data-repository content providers, pinned to one validated source.

In: a data-repository `Source` (sources.py) and the configured `ProviderHosts`. Out: a content
provider and the spec its `fetch()` takes, made without a network call. repo2docker's `detect()`
would ask doi.org, a list of Dataverse installations on GitHub or the CKAN site, and guess which
provider a URL belongs to; the resolver already knows, and said so in the event.

What the providers' answers hold is a stranger's upload (file names, download links), so each
pinned provider asks only its own origins, refuses file names that are absolute, walk up (`..`)
or hold control characters, and unpacks tar archives through tarfile's data filter (no links
out of the checkout, no device files). Known gaps, from repo2docker's providers themselves:
Dataverse fetches the dataset's latest version; HydroShare waits for its bag on
s3.hydroshare.org, so only the public HydroShare works; redirects of downloads are followed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

from repo2docker.contentproviders import CKAN, Dataverse, Figshare, Hydroshare, Swhid, Zenodo
from repo2docker.contentproviders.base import ContentProvider, ContentProviderException
from repo2docker.utils import deep_get

from bindery.builder.sources import ProviderHosts, Source, origin

# Seconds without a byte from a provider before its request fails: a provider that accepts the
# connection and never answers must not hold a build until the build timeout.
READ_TIMEOUT = 60.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_file_name(name: Any) -> str:
    """`name` if it is a relative path that stays inside the checkout, else raise."""
    if (
        not isinstance(name, str)
        or not name
        or _CONTROL.search(name)
        or os.path.isabs(name)
        or ".." in name.replace("\\", "/").split("/")
    ):
        raise ContentProviderException(
            f"The record holds a file with an unsafe name: {name!r:.120}"
        )
    return name


class _Guarded:
    """Mixed into a content provider: requests only to `origins`, with a read timeout."""

    origins: frozenset[str] = frozenset()

    def _request(self, url: str, *args: Any, **kwargs: Any) -> Any:
        if origin(url) not in self.origins:
            raise ContentProviderException(
                f"The record points to {origin(url)[:120]}, which is not where this provider "
                f"serves files ({', '.join(sorted(self.origins))})"
            )
        parent: Any = super()
        return parent._request(url, *args, **kwargs)

    # The providers call both names; DoiProvider binds `urlopen` to its own `_request`.
    urlopen = _request

    def fetch_file(self, file_ref: Any, host: Any, output_dir: str, unzip: bool = False) -> Any:
        check_file_name(deep_get(file_ref, host["filename"]))
        parent: Any = super()
        return parent.fetch_file(file_ref, host, output_dir, unzip)


class _Zenodo(_Guarded, Zenodo):  # type: ignore[misc]
    pass


class _Figshare(_Guarded, Figshare):  # type: ignore[misc]
    pass


class _Dataverse(_Guarded, Dataverse):  # type: ignore[misc]
    pass


class _Hydroshare(_Guarded, Hydroshare):  # type: ignore[misc]
    pass


class _CKAN(_Guarded, CKAN):  # type: ignore[misc]
    """CKAN names each file after its resource's URL or id, both the site's to choose: the
    dataset's answer is checked where it is parsed, before any file is written."""

    def _request(self, url: str, *args: Any, **kwargs: Any) -> Any:
        response = super()._request(url, *args, **kwargs)
        if not kwargs.get("stream"):
            parse = response.json

            def checked() -> Any:
                dataset = parse()
                for resource in deep_get(dataset, "result.resources"):
                    name = str(resource["url"]).rsplit("/", maxsplit=1)[-1] or resource["id"]
                    if "/" in str(check_file_name(name)):
                        raise ContentProviderException(f"Unsafe resource id {name!r:.120}")
                return dataset

            response.json = checked
        return response

    urlopen = _request


class _Swhid(_Guarded, Swhid):  # type: ignore[misc]
    pass


def pinned(source: Source, hosts: ProviderHosts) -> tuple[ContentProvider, Any]:
    """The content provider for `source` and the spec to fetch it with."""
    parts = source.parts
    provider: Any
    spec: Any
    match source.provider:
        case "zenodo":
            base = hosts.zenodo_url.rstrip("/")
            host = {
                "hostname": [f"{base}/records/"],
                "api": f"{base}/api/records/",
                "files": "links.files",
                "filepath": "entries",
                "filename": "key",
                "download": "links.content",
                "type": "metadata.upload_type",
            }
            provider = _Zenodo()
            provider.record_id = parts["record"]
            provider.origins = frozenset({origin(base)})
            spec = {"record": parts["record"], "host": host}
        case "figshare":
            api = hosts.figshare_api_url.rstrip("/")
            host = {
                "hostname": [f"{hosts.figshare_url.rstrip('/')}/articles/"],
                "api": f"{api}/articles/",
                "filepath": "files",
                "filename": "name",
                "download": "download_url",
            }
            provider = _Figshare()
            provider.article_id, provider.article_version = parts["article"], parts["version"]
            provider.origins = frozenset({origin(api), origin(hosts.figshare_download_url)})
            spec = {"article": parts["article"], "host": host, "version": parts["version"]}
        case "dataverse":
            provider = _Dataverse()
            provider.persistent_id = f"doi:{parts['doi']}"
            provider.origins = frozenset({parts["site"]})
            spec = source.url
        case "hydroshare":
            base = hosts.hydroshare_url.rstrip("/")
            host = {
                "hostname": [f"{base}/resource/"],
                "django_s3": f"{base}/django_s3/download/bags/",
                "version": f"{base}/hsapi/resource/{{}}/scimeta/elements",
            }
            provider = _Hydroshare()
            provider.resource_id = parts["resource"]
            provider.version = source.version.rpartition(".v")[2]
            provider.origins = frozenset({origin(base)})
            spec = {"resource": parts["resource"], "host": host, "version": provider.version}
        case "ckan":
            provider = _CKAN()
            provider.dataset_id = parts["dataset"]
            provider.version = source.version.removeprefix(f"{parts['dataset']}.")
            provider.origins = frozenset({origin(parts["site"])})
            spec = {
                "dataset_id": parts["dataset"],
                "activity_id": parts["activity"] or None,
                "api_url": f"{parts['site']}/api/3/action/",
                "version": provider.version,
            }
        case "swhid":
            provider = _Swhid()
            provider.base_url = hosts.swh_api_url.rstrip("/")
            provider.origins = frozenset({origin(hosts.swh_api_url)})
            spec = {
                "swhid": source.url,
                "swhid_obj": {"version": "1", "type": parts["kind"], "hash": parts["hash"]},
            }
        case _:
            raise ValueError(f"{source.provider} is not a data-repository provider")
    _time_out_reads(provider.session)
    return provider, spec


def fetch(source: Source, hosts: ProviderHosts, checkout_path: str) -> Iterator[str]:
    """Fetch `source` into `checkout_path`, yielding the provider's progress lines."""
    provider, spec = pinned(source, hosts)
    # Archives from the record: no member may leave the checkout or link outside it.
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    # Some providers unpack into, or test paths relative to, the working directory.
    with tempfile.TemporaryDirectory(prefix="bindery-fetch-") as scratch, contextlib.chdir(scratch):
        try:
            yield from provider.fetch(spec, checkout_path, yield_output=True)
        except ContentProviderException:
            raise
        except Exception as e:
            # requests' HTTPError, a KeyError on an unexpected answer: the record is unfetchable.
            raise ContentProviderException(f"{type(e).__name__}: {e}") from e


def _time_out_reads(session: Any) -> None:
    request = session.request

    def with_timeout(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", READ_TIMEOUT)
        return request(*args, **kwargs)

    session.request = with_timeout
