"""fsspec helpers shared by the storage package: open a URL, translate errors, write atomically.

Every error that leaves this package is a :class:`StorageError` (an ``OSError``) whose message
names the URL (with any ``user:password@`` part and credential-like query values removed:
:func:`redact_url`) and says what to fix. Messages never carry credentials: values of
secret-looking ``storage_options`` keys, and credentials written into the URL, are scrubbed.

S3 notes: an endpoint goes in
``storage_options={"client_kwargs": {"endpoint_url": ...}}`` (or ``endpoint_url=...``, moved there
by :func:`open_fs`); the region comes from ``AWS_DEFAULT_REGION``.

One way to reach storage everywhere: :func:`resolve_storage_options` is what every reader, writer
and job uses. ``None`` means "as the jobs do": ``$STORAGE_OPTIONS`` (JSON, or ``@path`` of a JSON
file); a mapping, even ``{}``, is used as given, as ``--storage-options`` replaces the variable.
Either way the result is a copy, so no library the project hands it to can change the caller's dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec

_SECRET_KEYS = ("key", "secret", "token", "password", "passwd", "session_token", "aws_secret_access_key",
                "aws_access_key_id", "aws_session_token", "account_key", "sas_token", "client_secret")


class StorageError(OSError):
    """A storage operation failed; the message names the URL and a fix, never a credential.

    ``transient`` says whether the store failed in a way that passes (throttling, 5xx, timeouts,
    dropped connections: retried already, for the retry budget) or not (missing, denied, invalid).
    """

    transient = False


class StorageNotFound(StorageError, FileNotFoundError):
    """The bucket, object or directory does not exist."""


class StorageAccessDenied(StorageError, PermissionError):
    """The store refused the credentials or the operation."""


class StorageFull(StorageError):
    """The store has no room for a write (a full disk or volume, a quota); the message says so."""


class InvalidStorageInput(StorageError, ValueError):
    """An argument storage cannot use as given (a name that is not a safe file name, a shard size
    that contradicts the stored plan...); the message says what to change."""


#: ``scheme://user:password@`` or ``scheme://token@`` at the start of a URL. The password may hold
#: ``/`` and ``+`` (AWS secrets do), which :func:`urllib.parse.urlsplit` would take for the path; a
#: ``host:port/`` followed by an ``@`` in the path is not taken for one.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/@:]*:(?![0-9]+/)[^\s@]*|[^\s/@:]+)@")
#: Query parameters that carry credentials (presigned S3 URLs, Azure SAS, API keys, tokens).
_SECRET_QUERY = re.compile(r"(?P<name>[?&][A-Za-z0-9_.-]*(?:signature|sig|token|credential|secret|password|passwd|"
                           r"key)[A-Za-z0-9_.-]*=)[^&#\s]*", re.IGNORECASE)
#: A URL inside free text (an error message, a warning).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part and with the values of credential-like query
    parameters (``X-Amz-Signature``, ``sig``, ``token``...) replaced by ``***``: safe for
    messages, logs and run records. Equal for two URLs that differ only in their credentials, so
    a stored, redacted URL can be compared with a redacted new one."""
    text = str(url)
    if "://" not in text:
        return text
    text = _USERINFO.sub(r"\g<scheme>", text, count=1)
    return _SECRET_QUERY.sub(r"\g<name>***", text) if "?" in text else text


def same_url(stored: str | None, url: str) -> bool:
    """Whether a URL stored redacted (run.json) names ``url``: compared like with like."""
    return stored is not None and redact_url(stored) == redact_url(url)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), str(text)) if "://" in str(text) else str(text)


def url_secrets(url: str) -> list[str]:
    """The credentials written into ``url`` (its ``user:password@`` part, each half, and the pieces
    between its slashes), to scrub them from messages that quote the URL without its scheme: s3fs
    takes ``KEY:SE/CRET@bucket`` for a bucket ``KEY:SE`` and a key ``CRET@bucket/...``, and
    botocore's errors repeat those."""
    match = _USERINFO.match(str(url))
    if not match:
        return []
    userinfo = match.group()[len(match.group("scheme")):-1]
    parts = [userinfo, *userinfo.split(":", 1), *userinfo.split("/"), *userinfo.split(":", 1)[-1].split("/")]
    return list(dict.fromkeys(part for part in parts if len(part) >= 3))


def _secrets(storage_options: Mapping[str, Any] | None) -> list[str]:
    """String values of secret-looking keys, searched recursively (client_kwargs, config_kwargs...)."""
    found: list[str] = []
    for k, v in (storage_options or {}).items():
        if isinstance(v, Mapping):
            found += _secrets(v)
        elif isinstance(v, str) and len(v) >= 3 and str(k).lower() in _SECRET_KEYS:
            found.append(v)
    return found


#: Words that make an option's key look like it holds a credential (for the command-line warning).
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "session", "credential", "sas", "signature")


def secret_option_keys(storage_options: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """The dotted keys of ``storage_options`` (nested too: ``client_kwargs.aws_secret_access_key``)
    whose names look like they hold a credential; their values are never looked at."""
    found: list[str] = []
    for k, v in (storage_options or {}).items():
        if isinstance(v, Mapping):
            found += secret_option_keys(v, f"{prefix}{k}.")
        elif any(word in str(k).lower() for word in _SECRET_WORDS):
            found.append(f"{prefix}{k}")
    return found


def scrub(text: str, storage_options: Mapping[str, Any] | None = None, extra: Sequence[str] = ()) -> str:
    """``text`` with every credential of ``storage_options``, of the environment and of ``extra`` (e.g.
    :func:`url_secrets`) replaced by ***, and every URL in it redacted (:func:`redact_text`)."""
    env = [os.environ.get(n, "") for n in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    env += _secrets(_env_options_quietly()) if os.environ.get(STORAGE_OPTIONS_ENV) else []
    text = redact_text(text)
    for secret in sorted({s for s in [*_secrets(storage_options), *env, *extra] if s and len(s) >= 3},
                         key=len, reverse=True):
        text = text.replace(secret, "***")
    return text if len(text) <= 400 else text[:400] + "..."


#: Storage options for every URL when a caller passes none: JSON, or ``@path`` of a JSON file (the
#: jobs' default for ``--storage-options``, and the readers').
STORAGE_OPTIONS_ENV = "STORAGE_OPTIONS"


def parse_storage_options(text: str, origin: str = "storage options") -> dict[str, Any]:
    """The options ``text`` holds: a JSON object, or ``@path`` of a file holding one. Errors name
    ``origin`` (the flag or variable) and never echo the text: it may hold credentials."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise InvalidStorageInput(f"cannot read {origin} file {text[1:]!r}: {err.strerror}") from None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidStorageInput(f"{origin} is not valid JSON ({err.msg} at position {err.pos})") from None
    if not isinstance(options, dict):
        raise InvalidStorageInput(f"{origin} must be a JSON object, got {type(options).__name__}")
    return options


def env_storage_options() -> dict[str, Any]:
    """``$STORAGE_OPTIONS``'s options ({} when it is unset or empty); read at each call, so a
    long-lived Python sees the variable as it is now."""
    text = os.environ.get(STORAGE_OPTIONS_ENV)
    return parse_storage_options(text, f"${STORAGE_OPTIONS_ENV}") if text else {}


def resolve_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options to open URLs with: a copy of the caller's, or ``$STORAGE_OPTIONS``'s when the
    caller passes None, exactly as the jobs read it; an explicit ``{}`` means none. Copied all the
    way down (dicts and lists), because libraries fill in the dicts they are given: HF ``datasets``
    adds ``hf``, fsspec ``protocol``."""
    if storage_options is None:
        return env_storage_options()
    return _copied(storage_options)


def _copied(value: Any) -> Any:
    """Dicts and lists copied at every level; other values (a session object...) shared."""
    if isinstance(value, Mapping):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _env_options_quietly() -> dict[str, Any]:
    """``$STORAGE_OPTIONS``'s options for scrubbing a message: {} when unreadable (that error is raised
    where the options are used)."""
    try:
        return env_storage_options()
    except StorageError:
        return {}


def normalize_options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options resolved (:func:`resolve_storage_options`), with a top-level S3 ``endpoint_url``
    moved into ``client_kwargs``, where s3fs takes it."""
    options = resolve_storage_options(storage_options)
    if str(url).startswith(("s3://", "s3a://")) and "endpoint_url" in options:
        client_kwargs = dict(options.get("client_kwargs") or {})
        client_kwargs.setdefault("endpoint_url", options.pop("endpoint_url"))
        options["client_kwargs"] = client_kwargs
    return options


def open_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``url`` (a local path, ``s3://...``, ...)."""
    if not url:
        raise StorageError("empty storage URL: give a local path or a URL such as s3://bucket/prefix")
    options = normalize_options(url, storage_options)  # a bad $STORAGE_OPTIONS is its own error, not the URL's
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **options)
    except ImportError as err:
        detail = scrub(str(err), storage_options, url_secrets(url))
        raise StorageError(f"cannot open {redact_url(url)}: the filesystem's package is missing ({detail}); "
                           "install it, e.g. pip install s3fs") from None
    except (ValueError, TypeError) as err:
        detail = scrub(str(err), storage_options, url_secrets(url))
        raise StorageError(f"cannot open {redact_url(url)}: {type(err).__name__}: {detail}; "
                           "check the URL and storage_options") from None
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """True where one PUT is atomic (S3, GCS, Azure...): objects appear whole or not at all."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss") for p in protocols)


def is_file(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` is a file; False when nothing is there. Unlike fsspec's ``isfile``, which answers
    False for *any* error, a failing store raises, so that :func:`storage.io.retry.retrying` can retry it
    instead of taking a throttled request for a missing file."""
    try:
        return fs.info(path)["type"] == "file"
    except FileNotFoundError:
        return False


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for URLs and paths alike (no duplicated slashes)."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


#: The first word of the actions that write (see :func:`translate`).
_WRITES = ("write", "publish", "create", "finish", "take", "renew", "delete")


def translate(err: BaseException, url: str, action: str, storage_options: Mapping[str, Any] | None = None
              ) -> StorageError:
    """A :class:`StorageError` for ``err`` raised while doing ``action`` on ``url``, with a fix."""
    if isinstance(err, StorageError):
        return err
    shown = redact_url(url)
    detail = scrub(f"{type(err).__name__}: {err}", storage_options, url_secrets(url))
    text = str(err)
    from storage.io.retry import is_out_of_space, is_transient

    if is_out_of_space(err):
        return StorageFull(f"cannot {action} {shown}: the store is out of space ({detail}): free space or give it "
                           "more (a bigger volume or quota), then rerun the same command (committed work is kept)")
    if is_transient(err):
        retried = getattr(err, "retried", None)
        tried = f"kept failing for {retried[1]:.0f} s ({retried[0]} attempt{'s' if retried[0] != 1 else ''}; " \
            if retried else "failed ("
        if action.split(" ", 1)[0] in _WRITES:  # a full store may answer writes with nothing but a 500
            why = ("it is overloaded, unreachable or out of space (some stores, SeaweedFS for one, answer every "
                   "write with 500 InternalError when full): free space if it is full, and rerun the same command "
                   "when it takes writes again (committed work is kept)")
        else:
            why = "it is overloaded or unreachable: rerun the same command when it answers again (committed work is kept)"
        failure = StorageError(f"cannot {action} {shown}: the store {tried}{detail}); {why}")
        failure.transient = True
        return failure
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        if "bucket does not exist" in text or "NoSuchBucket" in text:
            fix = "the bucket does not exist: create it or fix the bucket name in the URL"
        else:
            fix = "no such object or directory: check the URL (and the split / prefix)"
        return StorageNotFound(f"cannot {action} {shown}: {fix} ({detail})")
    if isinstance(err, PermissionError) or any(s in text for s in (
            "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "ExpiredToken")):
        if any(s in text for s in ("signature", "Signature", "access key", "InvalidAccessKeyId", "Forbidden")):
            fix = ("the store rejected the credentials: check key/secret (storage_options 'key'/'secret' or "
                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and that they may access this bucket")
        else:
            fix = "permission denied: check that these credentials may access this bucket/path"
        return StorageAccessDenied(f"cannot {action} {shown}: {fix} ({detail})")
    if isinstance(err, (ConnectionError, TimeoutError)) or "Could not connect" in text or "EndpointConnection" in text:
        return StorageError(f"cannot {action} {shown}: the store is unreachable: check endpoint_url "
                            f"(storage_options client_kwargs) and the network ({detail})")
    return StorageError(f"cannot {action} {shown}: {detail}")


@contextlib.contextmanager
def storage_errors(url: str, action: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Re-raise any error inside the block as a :class:`StorageError` naming ``url``, with no traceback chain.

    The chain is dropped (``from None``) because botocore exceptions can hold request details.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend raises its own types
        raise translate(err, url, action, storage_options) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see no file, the old file, or the whole new one.

    Local: a temporary sibling, fsync, ``os.replace``. Object stores: one PUT of the final key
    (atomic there). Other filesystems: a temporary sibling moved into place.
    """
    if is_local(fs):
        path = fs._strip_protocol(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    elif is_object_store(fs):
        fs.pipe_file(path, data)
    else:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        try:
            fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            raise


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> bytes:
    """Write ``obj`` as sorted, indented JSON atomically; returns the bytes written."""
    data = (json.dumps(obj, sort_keys=True, indent=1, default=_json_default) + "\n").encode()
    write_bytes_atomic(fs, path, data)
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)
