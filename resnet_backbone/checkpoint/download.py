"""Weights named by a URL or a detectron2:// path, downloaded once into a local cache.

``fetch(path)`` returns a local file for MODEL.WEIGHTS and tools/convert_weights.py --input:

* a local file is returned as is;
* ``detectron2://X`` is detectron2's model-zoo namespace: resolved to a URL by detectron2's own handler
  (``detectron2.utils.file_io.Detectron2Handler``), then downloaded like any URL;
* ``http://``, ``https://`` and ``file://`` URLs are downloaded into ``$RB_CACHE_DIR`` (default
  ``~/.cache/resnet_backbone``) under ``<host>/<path of the URL>``, so the file keeps its name and a second call
  reads the cached copy. The download shows a progress bar, is checked against the published SHA-256 where there
  is one (torchvision's files carry the first hex digits of it in their name, e.g. ``vgg16-397923af.pth``) and
  is written atomically, so an interrupted download never leaves a file under the cached name;
* other schemes go to detectron2's PathManager (whatever handlers it has registered).

Without a network, copy the cache folder (or a file written by tools/convert_weights.py) from a machine that has
one; the error of a failed download says where the file is expected.
"""
import hashlib
import os
import re
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import unquote, urlparse

from ..utils.atomic import atomic_write
from ..utils.cache import cache_dir

__all__ = ["cached_path", "fetch", "is_remote", "published_sha256",
           "resolve_url"]

DOWNLOAD_SCHEMES = ("http", "https", "file")
# torch.hub's convention for published files: <name>-<leading hex digits of the SHA-256>.<ext>
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def is_remote(path) -> bool:
    """True for a URL-like name (scheme://...) that is not a local file."""
    path = os.fspath(path)
    return "://" in path and not os.path.isfile(path)


def resolve_url(path: str) -> str:
    """``detectron2://X`` -> the URL detectron2's model-zoo handler reads it from; other names unchanged."""
    from detectron2.utils.file_io import Detectron2Handler

    if path.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX):]
    return path


def cached_path(url: str) -> str:
    """Where ``url`` is cached: <cache>/<host, or "file" for file://>/<the URL's path>."""
    parsed = urlparse(url)
    parts = [p for p in unquote(parsed.path).split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"cannot cache {url!r}: the URL names no file")
    return os.path.join(str(cache_dir()), parsed.netloc or parsed.scheme, *parts)


def published_sha256(url: str) -> Optional[str]:
    """The SHA-256 prefix a published file name carries (``vgg16-397923af.pth`` -> "397923af"), or None."""
    found = _HASH_IN_NAME.search(os.path.basename(urlparse(url).path))
    return found.group(1) if found else None


def _progress(total: Optional[int], name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {name}",
                dynamic_ncols=True)


def _download(url: str, destination: str, *, sha256: Optional[str], progress: bool) -> None:
    """Stream ``url`` into ``destination`` (atomically), checking the SHA-256 prefix ``sha256`` if given."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(
            f"could not download {url}: {reason}. On a machine without internet access, download it elsewhere "
            f"(python tools/convert_weights.py --input {url} ... writes the converted file, or copy the file to "
            f"{destination}, where the cache in $RB_CACHE_DIR expects it), or set MODEL.WEIGHTS to a local file"
        ) from e
    with response:
        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) if length and length.isdigit() else None
        bar = _progress(total, os.path.basename(destination)) if progress else None
        received = 0
        try:
            with atomic_write(destination, "wb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                got = digest.hexdigest()
                if sha256 is not None and not got.startswith(sha256.lower()):
                    # raised inside atomic_write: the partial file is removed, nothing lands in the cache
                    raise ValueError(f"download of {url} is corrupt: its SHA-256 is {got}, the published one starts "
                                     f"with {sha256}; nothing was written to {destination}. Try again")
                if total is not None and received != total:
                    raise OSError(f"download of {url} ended after {received} of {total} bytes; nothing was written to "
                                  f"{destination}. Try again")
        finally:
            if bar is not None:
                bar.close()


def fetch(path, *, sha256: Optional[str] = None, progress: bool = True, path_manager=None) -> str:
    """A local file for ``path``: the file itself, or the cached download of a URL / detectron2:// path.

    sha256: expected SHA-256 (or a prefix of it) of a download; default the one published in the file name, if
        any. A cached file was checked when it was downloaded and is not read again.
    path_manager: resolves other schemes (default detectron2's PathManager).
    Names that are neither local files nor URLs are returned unchanged (the caller reports them missing).
    """
    path = os.fspath(path)
    if not is_remote(path):
        return path
    url = resolve_url(urlparse(path)._replace(query="").geturl())
    scheme = urlparse(url).scheme
    if scheme not in DOWNLOAD_SCHEMES:
        if path_manager is None:
            from detectron2.utils.file_io import PathManager as path_manager
        return path_manager.get_local_path(url)
    destination = cached_path(url)
    if not os.path.isfile(destination):
        _download(url, destination, sha256=sha256 or published_sha256(url), progress=progress)
    return destination

