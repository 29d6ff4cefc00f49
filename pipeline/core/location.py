"""Where a store lives: a local path (`pathlib.Path`) or an object-storage URL (`Url`).

`Url` is the part of Path's interface that har's store code uses (name, parent, with_name,
exists, iterdir, read_text, ...), over fsspec (s3fs for s3://, gcsfs for gs://, adlfs for az://):
the stage code stays one code path, and Zarr opens the URL itself (`zarr.open_group(str(url))`).
Credentials and endpoints come from the usual places (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, ~/.aws/config; GOOGLE_APPLICATION_CREDENTIALS; AZURE_*).

Object stores have no rename and no file locks; docs/design.md ("Stores on object storage") has
the scheme that keeps har's guarantees there: a lock object written only if absent, a working
prefix beside the store, and the store's own zarr.json written last when a new version is
published (`swap.publish`).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://(.*)$")
MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.+)$")   # s3://b/k as a pathlib.Path: s3:/b/k
BARE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):$")              # s3:// as a pathlib.Path: s3:
SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "memory")         # object stores fsspec reaches
GLOB = "*?[]"                                                 # what fsspec expands in the paths it deletes


class LocationError(ValueError):
    """A URL har cannot use; the message says what is allowed."""


def is_url(x) -> bool:
    return isinstance(x, Url) or (isinstance(x, str) and URL.match(x) is not None)


def check_bucket(text: str) -> None:
    """Refuse an object-store URL that names no bucket: `s3://`, `gs://`, `s3:///key` (pathlib would
    read the first as a local folder `s3:`, and the last as the bucket `key`). The command line
    checks every word it is given with this, before pathlib sees it; `Url` checks it too. E.g.
    "s3:///data/x.zarr" -> LocationError("s3:///data/x.zarr names no bucket; allowed: s3://BUCKET/KEY");
    "s3://b/x.zarr" and any word that is no object-store URL ("data/x.zarr", "tcp://host:8786") pass.
    """
    m = URL.match(text)
    if m and m.group(1).lower() in SCHEMES and (not m.group(2).strip("/") or m.group(2).startswith("/")):
        scheme = m.group(1).lower()
        raise LocationError(f"{text} names no bucket; allowed: {scheme}://BUCKET/KEY")


def of(x) -> "Path | Url":
    """A store location from a string, a Path or a Url (a URL spelled as a Path is taken back; `s3://`
    spelled as a Path, `s3:`, is refused: it names no bucket)."""
    if isinstance(x, Url):
        return x
    if isinstance(x, Path):
        bare = BARE.match(str(x))
        if bare and bare.group(1).lower() in SCHEMES:
            raise LocationError(f"{bare.group(1)}:// names no bucket; allowed: {bare.group(1).lower()}://BUCKET/KEY "
                                f"($PWD/{x} names a local folder called {x})")
        m = MANGLED.match(str(x))
        return Url(f"{m.group(1)}://{m.group(2)}") if m and len(m.group(1)) > 1 else x
    return Url(x) if is_url(x) else Path(x)


def _fs(scheme: str):
    """The scheme's filesystem for this process: s3fs and its kin are not fork-safe, so a forked
    DataLoader or Dask worker makes its own."""
    return _fs_of(scheme, os.getpid())


@lru_cache(maxsize=None)
def _fs_of(scheme: str, pid: int):
    import fsspec

    try:   # no listings cache: other processes (Dask workers, a second har) write the same prefixes
        return fsspec.filesystem(scheme, use_listings_cache=False) if scheme != "memory" else fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme, scheme)
        raise LocationError(f"{scheme}:// needs the {extra} package: pip install {extra} ({e})") from None


class Url:
    """An object-storage location, e.g. s3://bucket/data/ucf101.zarr (a key prefix)."""

    def __init__(self, url: str):
        m = URL.match(str(url))
        if not m:
            raise LocationError(f"{url!r} is not a URL; allowed: SCHEME://BUCKET/KEY")
        scheme, rest = m.group(1).lower(), m.group(2).strip("/")
        check_bucket(str(url))
        if scheme not in SCHEMES:
            raise LocationError(f"{scheme}://{rest}: URL scheme {scheme!r} is not supported; allowed: "
                                f"{', '.join(s + '://' for s in SCHEMES)}")
        parts = [p for p in rest.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise LocationError(f"{scheme}://{rest}: allowed: {scheme}://BUCKET/KEY without '.' or '..' parts")
        self.scheme, self.key = scheme, "/".join(parts)   # key: bucket/prefix, as fsspec names it

    # ---- Path's naming -------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"Url({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Url) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "Url") -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> "Url":
        return Url(f"{self}/{name}")

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def parent(self) -> "Url":
        head = PurePosixPath(self.key).parent
        return self if str(head) in (".", "") else Url(f"{self.scheme}://{head}")

    @property
    def parents(self) -> list["Url"]:
        out, cur = [], self
        while cur.parent != cur:
            cur = cur.parent
            out.append(cur)
        return out

    def with_name(self, name: str) -> "Url":
        return self.parent / name if self.parent != self else Url(f"{self.scheme}://{name}")

    def resolve(self) -> "Url":
        return self

    absolute = expanduser = resolve

    def check_writable(self) -> "Url":
        """This prefix, if har may write and delete under it: fsspec expands the glob characters
        * ? [ ] in the paths it deletes, so a delete there could reach other keys. Reading such a
        key (a video named clip[1].avi) is fine: reads name exact keys."""
        if any(c in self.key for c in GLOB):
            raise LocationError(f"{self}: allowed for a store: keys without the glob characters * ? [ ]")
        return self

    # ---- the object store ------------------------------------------------------------------------
    @property
    def fs(self):
        return _fs(self.scheme)

    def exists(self) -> bool:
        return self.fs.exists(self.key)

    def is_file(self) -> bool:
        return self.fs.isfile(self.key)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.key)

    def is_symlink(self) -> bool:
        return False

    def iterdir(self):
        for p in self.fs.ls(self.key, detail=False, refresh=True):
            yield Url(f"{self.scheme}://{p}")

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: a prefix exists once something is written under it."""

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.key, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self.fs.invalidate_cache(self.key)

    def remove_tree(self, listed: Iterable[str] | None = None) -> None:
        """Delete every object under this prefix: its zarr.json first, so a kill half-way leaves
        objects no har reader or resumer takes for a store (swap.resumable removes them). `listed`:
        the keys under it (relative) when the caller has just listed them and nothing else writes
        there (a publish's working store, whose writer holds the lock); listed here otherwise."""
        keys = sorted(self.files() if listed is None else set(listed), key=lambda k: k != "zarr.json")
        bad = [k for k in (self.key, *keys) if any(c in k for c in GLOB)]
        if bad:   # never handed to fsspec's rm, which would expand it
            raise LocationError(f"{self}: not deleted: {bad[0]!r} holds a glob character (* ? [ ])")
        if keys and keys[0] == "zarr.json":
            self.fs.rm_file(f"{self.key}/zarr.json")
            keys = keys[1:]
        if keys:
            self.fs.rm([f"{self.key}/{k}" for k in keys])
        self.fs.invalidate_cache(self.key)

    def copy_objects(self, target: Url, skip: frozenset[str] = frozenset()) -> dict[str, int]:
        """Server-side copies of every object under this prefix but those in `skip` (keys relative
        to it) to the same keys under `target`; returns the listing it copied from (key -> size).
        fsspec's copy needs each object's size (S3 copies one above 5 GB in parts) and asks the
        server for it, a HEAD per object, unless its listings cache holds it. The shared filesystem
        keeps no cache (other processes write the same prefixes), so on s3:// the listing and the
        copies go through a private instance whose cache that listing fills: one LIST per 1,000
        objects instead of a HEAD each (a library that stops reading its cache there still copies,
        with the HEADs). A key the listing lacks is an error (FileNotFoundError: the copy stops,
        and `swap.recover` publishes again), never skipped."""
        fs = self.fs
        if self.scheme == "s3":
            fs = type(fs)(**{**fs.storage_options, "use_listings_cache": True, "skip_instance_cache": True})
        found = {k: int(info.get("size") or 0) for k, info in self.listing(fs).items()}
        keys = sorted(k for k in found if k not in skip)
        if keys:
            fs.copy([f"{self.key}/{k}" for k in keys], [f"{target.key}/{k}" for k in keys])
        self.fs.invalidate_cache(target.key)
        return found

    def listing(self, fs=None) -> dict[str, dict]:
        """Every object under this prefix (not an object of this very name): key relative to it ->
        its listing entry (size, ETag, LastModified), in one listing (through `fs`: another
        instance of this scheme's filesystem)."""
        out = {}
        for p, info in (fs or self.fs).find(self.key, detail=True, withdirs=False).items():
            rel = p[len(self.key):].lstrip("/")
            if rel:
                out[rel] = info
        return out

    def files(self) -> dict[str, int]:
        """Every object under this prefix: key relative to it -> size."""
        return {k: int(info.get("size") or 0) for k, info in self.listing().items()}

    def put_if_absent(self, data: bytes) -> bool:
        """Write this object only if no object has this key (an atomic create on the server); False
        when one exists. The lock of an object-store writer. s3://: S3's If-None-Match: *. gs://:
        gcsfs's create mode (ifGenerationMatch=0); az://: adlfs's (If-None-Match: *): both through
        fsspec's pipe_file(mode="create"), from the versions in ATOMIC_CREATE on (earlier ones either
        refuse the mode or check and write in two steps, which two writers can both pass)."""
        if self.scheme == "s3":
            return self._put_if_absent_s3(data)
        self._check_atomic_create()
        try:
            self.fs.pipe_file(self.key, data, mode="create")
        except FileExistsError:
            return False
        except FileNotFoundError as e:
            raise LocationError(f"{self}: its bucket or container does not exist ({e}); create it first") from None
        except Exception as e:   # gcsfs: OSError (403), HttpError (401); the Azure SDK: AzureError
            name = type(e).__name__
            if name == "ResourceNotFoundError":
                raise LocationError(f"{self}: its container does not exist ({e}); create it first") from None
            if isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("gcsfs", "azure"):
                raise LocationError(f"{self}: could not write the writer lock ({name}: {e}); check the credentials "
                                    "(GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) and the bucket's permissions") from None
            raise
        finally:
            self.fs.invalidate_cache(self.key)
        return True

    def _check_atomic_create(self) -> None:
        package, floor = ATOMIC_CREATE.get(self.scheme, (None, None))
        if package is None:
            raise LocationError(f"{self}: a writer lock needs an atomic create-if-absent; har has one for "
                                f"{', '.join(s + '://' for s in ATOMIC_CREATE)} only")
        if floor is None:
            return
        from importlib.metadata import PackageNotFoundError, version

        from packaging.version import InvalidVersion, Version

        try:
            have = version(package)
        except PackageNotFoundError:
            raise LocationError(f"{self.scheme}:// needs the {package} package: pip install '{package}>={floor}'") from None
        try:
            old = Version(have) < Version(floor)
        except InvalidVersion:
            old = True
        if old:
            raise LocationError(f"{self}: {package} {have} has no atomic create for the writer lock; "
                                f"pip install '{package}>={floor}'")
        zonal = getattr(self.fs, "_is_zonal_bucket", None)   # gcsfs ignores create mode on a zonal bucket
        if zonal is not None:
            from fsspec.asyn import sync

            if sync(self.fs.loop, zonal, self.key.partition("/")[0]):
                raise LocationError(f"{self}: a zonal (rapid) GCS bucket: gcsfs writes there without the "
                                    "create condition, so two writers could both take the lock; use a regional bucket")

    def _put_if_absent_s3(self, data: bytes) -> bool:
        from fsspec.asyn import sync

        bucket, _, key = self.key.partition("/")
        try:
            sync(self.fs.loop, self.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:   # s3fs's translation of 412 Precondition Failed
            return False
        except FileNotFoundError as e:   # the first write of a run: say which bucket, and what to check
            raise LocationError(f"{self}: bucket {bucket!r} does not exist ({e}); create it first, or check "
                                "AWS_ENDPOINT_URL") from None
        except PermissionError as e:
            raise LocationError(f"{self}: writing is not allowed ({e}); check AWS_ACCESS_KEY_ID / "
                                "AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
        except OSError as e:      # a server whose 412 s3fs does not recognise as "exists"
            if "412" in str(e) or "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.key)
        return True


# scheme -> (package, the version whose pipe_file(mode="create") was read to be one conditional
# request: gcsfs simple_upload/initiate_upload send ifGenerationMatch=0 and turn 412 into
# FileExistsError, on regional buckets; adlfs maps it to upload_blob(overwrite=False),
# If-None-Match: *, ResourceExistsError -> FileExistsError). Earlier versions may do the same;
# they were not read. gcsfs calls its create mode experimental. memory://: one process's dict,
# "xb" (tests). s3:// has its own call above.
ATOMIC_CREATE = {"s3": ("s3fs", None), "gs": ("gcsfs", "2026.10.1"), "gcs": ("gcsfs", "2026.10.1"),
                 "az": ("adlfs", "2026.8.0"), "abfs": ("adlfs", "2026.8.0"), "memory": ("fsspec", None)}


def storage_options(path) -> dict:
    """What zarr.open_group needs for `path`: no listings cache for a URL (other processes write
    the same prefixes), nothing for a local path. On s3://, one transfer per object read: with
    s3fs's default (`max_concurrency` 10) every whole-object read is a HEAD for its size, to split
    objects above its 50 MB block into concurrent ranges, then the GET (ranged reads send no HEAD).
    Metadata and the per-video arrays' chunks are far smaller, and each cost two requests. The
    trade: a whole shard above 50 MB (`features` reads a batch at a time; lossless 224 px batches
    can reach ~60 MB) is now one stream, not ten, read while the previous batch is encoded."""
    if not isinstance(path, Url) or path.scheme == "memory":
        return {}
    return {"storage_options": {"use_listings_cache": False, **({"max_concurrency": 1} if path.scheme == "s3" else {})}}


def listdir(path) -> list[str]:
    """The names directly inside a local folder or a URL prefix."""
    return [p.name for p in path.iterdir()]


@contextlib.contextmanager
def local_file(path):
    """A local path to read `path` from: itself, or for an object a temporary copy (removed after);
    video decoders seek, and a local file is what every one of them reads fastest."""
    if not isinstance(path, Url):
        yield path
        return
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix="har-", suffix=path.suffix)
    os.close(fd)
    try:
        path.fs.get_file(path.key, tmp)
        yield Path(tmp)
    finally:
        os.unlink(tmp)
