"""Where the activation store lives: a local directory or an object-store URL, and how to reach it.

The one module that knows storage URLs and credentials. ``activations.store`` in params.yaml is
either the workspace path ``data/activations.zarr`` (the default: DVC caches the store itself) or a
URL, ``s3://bucket/prefix/activations.zarr`` (``gs://`` and ``az://`` where gcsfs / adlfs are
installed). A URL holds no credentials: they come from the environment and the SDK's own
configuration (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``; the endpoint of an S3-compatible server from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), and no message, record or log names them.

A `Location` gives the store writer and readers the few operations they need (a zarr store,
whole-object writes, listings, a move) for either kind, so that the writer's resume and the
readers' checks are one code path. Errors from a remote store become `StorageError`, naming the
URL and the endpoint, never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

from monosemantic.errors import UserError

LOCAL_STORE = "data/activations.zarr"  # the local store, and dvc.yaml's output for a remote one's manifest
MANIFEST = "manifest.json"  # in LOCAL_STORE when the store is remote: the URL and each file's md5

# scheme: (the fsspec package that implements it, its canonical scheme)
SCHEMES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gs"), "gcs": ("gcsfs", "gs"),
           "az": ("adlfs", "az"), "abfs": ("adlfs", "abfs"), "abfss": ("adlfs", "abfss")}
# Environment variables whose values are secrets: scrubbed from every message this module makes.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AZURE_STORAGE_KEY",
              "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_CLIENT_SECRET")
CREDENTIALS_HINT = {  # where each SDK looks for credentials (besides its own config files)
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_KEY, or AZURE_STORAGE_CONNECTION_STRING",
}


class StorageError(UserError):
    """A store could not be read or written: the message names the URL and what to check."""


class SecretInURL(ValueError):
    """A URL that carries credentials: the message must not repeat the value."""


def is_url(value: str | Path) -> bool:
    return isinstance(value, str) and "://" in value


def check(value: str) -> str:
    """`activations.store` as params.yaml may give it, or a ValueError saying what is allowed.
    Messages never repeat a URL that holds credentials."""
    if not is_url(value):
        if posixpath.normpath(value.replace("\\", "/")) != LOCAL_STORE:
            raise ValueError(f"a local store is {LOCAL_STORE} (the output dvc.yaml tracks); for another place "
                             "give an object-store URL, s3://bucket/prefix/activations.zarr")
        return LOCAL_STORE
    parts = urlsplit(value)
    if "@" in parts.netloc or parts.password is not None:
        raise SecretInURL("the URL holds credentials (user:secret@): remove them and set them in the "
                          f"environment instead ({CREDENTIALS_HINT['s3']})")
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use {', '.join(s + '://' for s in SCHEMES)} "
                         f"or the local path {LOCAL_STORE}")
    if parts.query or parts.fragment:  # may carry a token (an Azure SAS): not repeated either
        raise SecretInURL("the URL has a query or fragment (?… or #…): give bucket and path only; options "
                         "and credentials come from the environment")
    if not parts.netloc:
        raise ValueError(f"the URL names no bucket: {scheme}://BUCKET/prefix/activations.zarr")
    key = parts.path.strip("/")
    if not key or key in (".", "..") or any(p in (".", "..", "") for p in key.split("/")):
        raise ValueError(f"give a path inside the bucket, {scheme}://{parts.netloc}/prefix/activations.zarr: the "
                         "writer keeps <store>.partial and <store>.progress beside the store")
    return f"{scheme}://{parts.netloc}/{key}"


def scrub(text: str) -> str:
    """`text` with the value of every secret environment variable replaced by ***."""
    for name in SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def endpoint() -> str | None:
    """The S3-compatible endpoint from the environment (botocore's own variables), without credentials."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return url or None


def public_url(url: str) -> str:
    """A URL fit for a message: no user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def md5(data: bytes | Iterable[bytes]) -> str:
    h = hashlib.md5()
    for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        h.update(part)
    return h.hexdigest()


class Location:
    """A store's root: a local directory (`LocalLocation`) or an object-store prefix (`RemoteLocation`).
    Keys are '/'-separated paths relative to the root, as zarr names them."""

    url: str  # as messages and records show it: a path or a credential-free URL
    remote: bool

    def display(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    def sibling(self, suffix: str) -> "Location":
        """The location `<root><suffix>` beside this one (``.partial``, ``.progress``)."""
        raise NotImplementedError

    def zarr_store(self, read_only: bool) -> Any:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, parts: Iterable[bytes]) -> None:
        """Write one whole file (object): under its final name it is always complete."""
        raise NotImplementedError

    def files(self) -> dict[str, int]:
        """Every file below the root: key -> size in bytes (empty if there is nothing there)."""
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the root and everything below it (nothing there is fine)."""
        raise NotImplementedError

    def replace(self, final: "Location") -> None:
        """Put this store where `final` is: a reader of `final` sees the old store, none, or the new one."""
        raise NotImplementedError

    @contextlib.contextmanager
    def errors(self, doing: str, key: str = "") -> Iterator[None]:
        yield


class LocalLocation(Location):
    remote = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.url = str(self.path)

    def display(self, key: str = "") -> str:
        return str(self.path.joinpath(*key.split("/"))) if key else str(self.path)

    def sibling(self, suffix: str) -> "LocalLocation":
        return LocalLocation(self.path.with_name(self.path.name + suffix))

    def zarr_store(self, read_only: bool) -> Path:
        return self.path

    def exists(self, key: str) -> bool:
        return self.path.joinpath(key).is_file()

    def read(self, key: str) -> bytes:
        return self.path.joinpath(key).read_bytes()

    def write(self, key: str, parts: Iterable[bytes]) -> None:
        path = self.path.joinpath(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.writelines(parts)
        os.replace(tmp, path)

    def files(self) -> dict[str, int]:
        if not self.path.is_dir():
            return {}
        return {p.relative_to(self.path).as_posix(): p.stat().st_size for p in self.path.rglob("*") if p.is_file()}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def replace(self, final: Location) -> None:
        from monosemantic.provenance import replace_path

        assert isinstance(final, LocalLocation)
        replace_path(self.path, final.path)


class RemoteLocation(Location):
    """An object-store prefix through fsspec (s3fs for ``s3://``), as zarr's FsspecStore reads it."""

    remote = True

    def __init__(self, url: str):
        self.url = check(url)
        parts = urlsplit(self.url)
        self.scheme = SCHEMES[parts.scheme][1]
        self.root = f"{parts.netloc}/{parts.path.strip('/')}"
        self._fs = None

    def sibling(self, suffix: str) -> "RemoteLocation":
        return RemoteLocation(self.url + suffix)

    def options(self, asynchronous: bool = False) -> dict[str, Any]:
        """fsspec options: where, never who (credentials are the SDK's to find in the environment)."""
        package = SCHEMES[self.scheme][0]
        try:
            __import__(package)
        except ImportError:
            raise StorageError(f"{self.url}: reading {self.scheme}:// needs the {package} package "
                               f"(pip install {package}, or the project's s3 extra: pip install -e '.[s3]')") from None
        # A fresh synchronous client per Location (credentials are read when it is made; fsspec closes
        # it when dropped); zarr's asynchronous one is fsspec's cached instance, which lives as long as
        # the process (one made per open and then dropped would leave its session unclosed).
        opts: dict[str, Any] = {"asynchronous": True} if asynchronous else {"skip_instance_cache": True}
        if self.scheme == "s3":
            opts.update(use_listings_cache=False,
                        config_kwargs={"connect_timeout": 10, "read_timeout": 60,
                                       "retries": {"max_attempts": 3, "mode": "standard"}})
            if endpoint():
                opts["endpoint_url"] = endpoint()
        return opts

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(self.scheme, **self.options())
        return self._fs

    def zarr_store(self, read_only: bool) -> Any:
        from zarr.storage import FsspecStore

        with self.errors("opening"):
            return FsspecStore.from_url(f"{self.scheme}://{self.root}", storage_options=self.options(True),
                                        read_only=read_only)

    def _key(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str) -> bool:
        with self.errors("checking", key):  # not fs.isfile: it answers False to every error, refusals too
            try:
                return self.fs.info(self._key(key))["type"] == "file"
            except FileNotFoundError:
                return False

    def read(self, key: str) -> bytes:
        with self.errors("reading", key):
            return self.fs.cat_file(self._key(key))

    def write(self, key: str, parts: Iterable[bytes]) -> None:
        with self.errors("writing", key):  # one PUT (multipart past 100 MB): the object appears whole
            self.fs.pipe_file(self._key(key), b"".join(parts))

    def files(self) -> dict[str, int]:
        with self.errors("listing"):
            found = self.fs.find(self.root, detail=True)
        return {path[len(self.root) + 1:]: int(info.get("size") or 0) for path, info in found.items()
                if info.get("type") != "directory" and path.startswith(self.root + "/")}

    def info(self, key: str) -> dict[str, Any]:
        with self.errors("checking", key):
            return self.fs.info(self._key(key))

    def md5_of(self, key: str, expected: str | None = None) -> str:
        """The md5 of one file. An S3 ETag equal to `expected` is the server's md5 of what it holds (a
        single-part upload's), so the object is not downloaded; otherwise it is read and hashed."""
        etag = str(self.info(key).get("ETag") or "").strip('"')
        if expected is not None and etag == expected:
            return etag
        return md5(self.read(key))

    def remove(self) -> None:
        keys = list(self.files())
        if "zarr.json" in keys:  # the root's metadata first: a reader then sees no store, not half of one
            with self.errors("deleting", "zarr.json"):
                self.fs.rm_file(self._key("zarr.json"))
        rest = [self._key(k) for k in keys if k != "zarr.json"]
        if rest:
            with self.errors("deleting"):
                self.fs.rm(rest)

    def replace(self, final: Location) -> None:
        """Object stores cannot rename: copy server-side (no bytes through this machine), the root's
        zarr.json last, then delete this copy. Interrupted, `final` has no root zarr.json (readers say
        so) and this copy is whole: a re-run of the writer finds it and finishes the move."""
        assert isinstance(final, RemoteLocation) and final.scheme == self.scheme
        keys = sorted(self.files())
        final.remove()
        body = [k for k in keys if k != "zarr.json"]
        with self.errors("copying to " + final.url):
            if body:
                self.fs.copy([self._key(k) for k in body], [final._key(k) for k in body])
            self.fs.copy(self._key("zarr.json"), final._key("zarr.json"))
        self.remove()

    @contextlib.contextmanager
    def errors(self, doing: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except Exception as e:
            if not _is_storage_error(e):
                raise
            raise StorageError(self.explain(e, doing, key)) from None

    def explain(self, e: BaseException, doing: str, key: str = "") -> str:
        """What went wrong, where, and what to check: the URL and endpoint, never a credential."""
        where = self.display(key)
        via = f" (endpoint {public_url(endpoint())})" if self.scheme == "s3" and endpoint() else ""
        reason = scrub(" ".join(f"{type(e).__name__}: {e}".split()))[:400]
        hint = CREDENTIALS_HINT.get(self.scheme if self.scheme == "s3" else self.scheme[:2], "")
        if _denied(e):
            fix = f"the credentials were refused: check {hint} in the environment, and the bucket's permissions"
        elif isinstance(e, FileNotFoundError) or "NoSuchBucket" in reason:
            fix = "check that the bucket exists and the URL is right (activations.store in params.yaml)"
        else:
            fix = ("check that the object store is reachable" + (" at AWS_ENDPOINT_URL" if via else "") +
                   "; a re-run resumes from the shards already written")
        return f"{doing} {where}{via} failed: {reason}; {fix}"


def _is_storage_error(e: BaseException) -> bool:
    if isinstance(e, (OSError, TimeoutError)):
        return True
    module = type(e).__module__ or ""
    return module.split(".")[0] in {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure",
                                    "google", "fsspec", "urllib3", "requests"}


DENIED = (r"AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|NoCredentials|Unable to locate credentials|"
          r"InvalidToken|ExpiredToken|AuthorizationHeaderMalformed|AllAccessDisabled|Forbidden")


def _denied(e: BaseException) -> bool:
    """The server's answer where the error carries it (botocore's code and HTTP status, aiohttp's status);
    else the message's words with its URLs, keys and ports blanked: neither :34033 nor c/403/0 is a 403."""
    if isinstance(e, PermissionError):
        return True
    answer = getattr(e, "response", None)
    if isinstance(answer, dict) and ("Error" in answer or "ResponseMetadata" in answer):
        code, status = answer.get("Error", {}).get("Code"), answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status == 403 or bool(re.fullmatch(DENIED + r"|403", str(code)))
    if isinstance(getattr(e, "status", None), int):
        return e.status == 403
    text = re.sub(r"\S+://\S+|\S*\w/\w\S*|:\d+", " ", f"{type(e).__name__} {e}")
    return bool(re.search(DENIED + r"|\(403\)|\b403 Forbidden", text))


def location(value: str | Path) -> Location:
    """The Location for a local path or a store URL."""
    return RemoteLocation(value) if is_url(value) else LocalLocation(value)


# ---------------------------------------------------------------- the workspace's manifest of a remote store
def write_manifest(directory: Path, store: RemoteLocation, files: dict[str, dict[str, Any]]) -> None:
    """`files`: key -> {"md5", "size"} of every file of the finished store."""
    from monosemantic.provenance import write_json

    write_json(directory / MANIFEST, {"url": store.url, "files": dict(sorted(files.items()))})


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest a workspace path holds in place of a remote store, or None if it holds none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    fix = f"restore it (dvc checkout {directory}) or re-run cache_activations"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); {fix}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not (isinstance(data.get("url") if isinstance(data, dict) else None, str) and isinstance(files, dict)
            and all(isinstance(v, dict) and isinstance(v.get("md5"), str) for v in files.values())):
        raise UserError(f"{path}: not a store manifest ({{url, files: {{key: {{md5, size}}}}}}); {fix}")
    try:
        check(data["url"])
    except ValueError as e:
        raise UserError(f"{path}: its url is not a store URL ({e}); {fix}") from None
    return data


def resolve(path: str | Path) -> tuple[Location, dict[str, Any] | None]:
    """Where the store a reader was pointed at lives: a URL, a local store, or a workspace path holding
    the manifest of a remote store (then the manifest too, to check the store against)."""
    if is_url(path):
        return RemoteLocation(str(path)), None
    manifest = read_manifest(Path(path))
    if manifest is not None:
        return RemoteLocation(manifest["url"]), manifest
    return LocalLocation(path), None
