"""Run the embedded SecantusDB server, with four measured fixes.

The engine starts this file as the database process (``python storage/secantus_server.py
ARGS``, ARGS as for ``python -m secantus``). It is a script, not an import of our package:
the database process loads SecantusDB and nothing of ours.

The fix. SecantusDB 0.7.0b3 reads a collection's index catalog (a WiredTiger scan plus a
BSON decode per index, ``Storage._iter_indexes``) again and again while it writes: through
``_index_options_map`` (whose docstring says "cached per call (the caller handles per-doc
loops)", though no caller does) up to four times per written document, and through
``_all_indexes``, ``_partial_filters`` and the query planner for every update's filter.
py-spy put a third of the database's busy time there under our write load; a bulk insert
into a collection with one secondary index cost 272-310 us per document against 71-96 us
without the index (bench/README.md).

We read the catalog once per statement chunk instead. Each patched method below runs with
its collection lock held, and SecantusDB changes a collection's indexes only under that
same lock (``create_index``, ``drop_index``, collMod; its "LOCK ORDER" comments), so the
catalog cannot change under a chunk, except for the ``multikey`` flag the chunk itself may
set; SecantusDB reads that flag once at the start of a chunk anyway. A write-conflict retry
re-enters the method and starts a fresh memo.

And one more read per command: ``_maybe_record_profile`` asks ``Storage.get_profile`` for
the database's profiling level after every command, a WiredTiger lookup under the storage's
global lock: a tenth of the database's busy time while 1,000 sessions recover. The level
changes only through ``Storage.set_profile`` (the ``profile`` command), so we keep it per
database and drop it when it is set; both run under that same lock.

And ``$in`` over many strings. SecantusDB's matcher tests a document against a ``$in``
list one candidate at a time, with its type-aware equality, so a query for the records of
N sessions costs N comparisons per returned document. Reading the checkpoints of 1,000
sessions with one ``$in`` took 5.5 s, and with 32 ids per query 0.5 s; the last event
numbers of 1,000 sessions, 1.4-16 s depending on the chunk (bench/README.md). When every
candidate is a ``str``, no collation applies and every value the path reaches is a
``str``, that equality is plain string equality, so one set lookup answers it. Any other
case (numbers, arrays as values, ``None``, a collation, regexes) takes SecantusDB's own
path.

And updates rewrite only the index entries they change. SecantusDB rewrites a document
by deleting every index entry it had and writing every entry of its new version, so
taking the lease of a session (``owner``, ``epoch``: no index) rewrote the entries of all
three indexes of ``sessions``. Both update paths check the new version's unique keys
against the document's RecordId (``_unique_conflict``), then delete and write that
RecordId's entries. That check names the new version, so the delete and the write that
follow skip each index whose entries are equal for both versions: the same partial-filter
membership and the same key bytes (collation and multikey included); geo indexes are
always rewritten. An update of 32 session documents' lease fields: 31.6 → 21-23 ms in
process. A document whose update is refused drops its announcement.

And a unix socket to listen on. SecantusDB 0.7 listens on TCP only, with no
authentication unless users are provisioned through an unauthenticated first run, so any
local user could read and write every session on its port. Given a ``--host`` that is an
absolute path, the server listens on a unix domain socket there instead (mode 0600, in
the engine's 0700 folder: only the engine's user can connect) and opens no TCP port. Its
stop also wakes the accept loop by shutting the listening socket down: SecantusDB only
closes it, which leaves ``accept()`` blocked until its 2 s join timeout, so every stop
took 2.1 s (bench/embedded_start.py).

The patches are applied only to the SecantusDB version they were checked against; any
other version runs unpatched, with a warning in its log, and cannot listen on a socket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Run as a script, Python puts this folder first on sys.path; our module names (records,
# files, ...) must not shadow anything SecantusDB imports.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

logger = logging.getLogger("illustrator.secantus_server")

PATCHED_VERSIONS = frozenset({"0.7.0b3"})
"""SecantusDB versions whose source the memo below was checked against."""

CHUNK_METHODS = ("_insert_chunk", "_update_chunk", "_update_matching_single_txn")
"""Storage methods that run one statement chunk with the collection lock held."""

UPDATE_METHODS = ("_update_chunk", "_update_matching_single_txn")
"""The two update paths: each rewrites a document's index entries as delete all, write all."""

REWRITE_METHODS = (
    "_chunk_doc_update_checked",
    "_unique_conflict",
    "_delete_index_entries",
    "_write_index_entries",
)
"""Storage methods wrapped so that an update skips the index entries it leaves unchanged."""

_scope = threading.local()


def _memoized_catalog(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def iter_indexes(self: Any, db: str, coll: str) -> Iterator[Any]:
        memo: dict[tuple[str, str], list[Any]] | None = getattr(_scope, "memo", None)
        if memo is None:
            return original(self, db, coll)
        key = (db, coll)
        if key not in memo:
            memo[key] = list(original(self, db, coll))
        return iter(memo[key])

    return iter_indexes


def _in_memo_scope(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def chunk(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(_scope, "memo", None)
        _scope.memo = {}
        try:
            return method(self, *args, **kwargs)
        finally:
            _scope.memo = outer

    return chunk


def _cached_profile_reads(
    get_profile: Callable[..., Any], set_profile: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def cached(self: Any) -> dict[str, dict[str, Any]]:
        return self.__dict__.setdefault("_illustrator_profiles", {})

    @functools.wraps(get_profile)
    def get(self: Any, db: str) -> dict[str, Any]:
        settings = cached(self).get(db)
        if settings is None:
            with self._lock:  # the lock set_profile writes under: no stale value cached
                settings = cached(self).get(db)
                if settings is None:
                    settings = cached(self)[db] = get_profile(self, db)
        return dict(settings)

    @functools.wraps(set_profile)
    def set_(self: Any, db: str, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            try:
                set_profile(self, db, *args, **kwargs)
            finally:
                cached(self).pop(db, None)

    return get, set_


def _string_sets(op_matches: Callable[..., Any]) -> Callable[..., Any]:
    """``$in`` over a list of strings tested as one set lookup (see the module docstring)."""
    last = threading.local()

    def string_set(arg: list[Any]) -> frozenset[str] | None:
        cached = getattr(last, "pair", None)
        if cached is None or cached[0] is not arg:  # the list stays referenced: no id reuse
            strings = all(type(candidate) is str for candidate in arg)
            cached = last.pair = (arg, frozenset(arg) if strings else None)
        return cached[1]

    @functools.wraps(op_matches)
    def matches(
        values: list[Any],
        op: str,
        arg: Any,
        collation: Any = None,
        *,
        field: str = "",
        descend: bool = True,
    ) -> bool:
        if (
            op == "$in"
            and collation is None
            and type(arg) is list
            and values
            and all(type(value) is str for value in values)
        ):
            strings = string_set(arg)
            if strings is not None:
                return not strings.isdisjoint(values)
        return op_matches(values, op, arg, collation, field=field, descend=descend)

    return matches


class _Rewrite:
    """One document an update is about to rewrite: its new version, announced by the
    update's unique-key check, and the indexes whose entries it really changes."""

    __slots__ = ("changed", "new", "recordid")

    def __init__(self, new: dict[str, Any], recordid: int) -> None:
        self.new, self.recordid = new, recordid
        self.changed: list[Any] | None = None


def _unchanged_entries_kept(storage: Any) -> dict[str, Callable[..., Any]]:
    """Storage methods that let an update leave alone the index entries it would delete
    and write back unchanged (see the module docstring)."""
    store = storage.Storage
    unique_conflict = store._unique_conflict
    delete_entries = store._delete_index_entries
    write_entries = store._write_index_entries
    same_entries = functools.partial(_same_entries, storage)

    @functools.wraps(unique_conflict)
    def announce(
        self: Any, db: str, coll: str, doc: Any, indexes: Any, *args: Any, **kwargs: Any
    ) -> Any:
        recordid = kwargs.get("exclude_recordid")
        if getattr(_scope, "updating", False):
            # Only the update paths check a document that already has a RecordId; the
            # index entries of that RecordId are deleted and written next, if at all.
            _scope.rewrite = _Rewrite(doc, recordid) if recordid is not None else None
        return unique_conflict(self, db, coll, doc, indexes, *args, **kwargs)

    @functools.wraps(delete_entries)
    def delete(
        self: Any, db: str, coll: str, doc: Any, indexes: Any, partials: Any = None, *,
        recordid: int,
    ) -> None:  # fmt: skip
        rewrite: _Rewrite | None = getattr(_scope, "rewrite", None)
        if (
            rewrite is not None
            and rewrite.recordid == recordid
            and rewrite.changed is None
            and rewrite.new.get("_id") == doc.get("_id")
            and indexes
        ):
            options = self._index_options_map(db, coll)  # once per document, not per index
            rewrite.changed = [
                index
                for index in indexes
                if not same_entries(doc, rewrite.new, index, partials, options)
            ]
            indexes = rewrite.changed
        else:
            _scope.rewrite = None
        delete_entries(self, db, coll, doc, indexes, partials, recordid=recordid)

    @functools.wraps(write_entries)
    def write(
        self: Any, db: str, coll: str, doc: Any, indexes: Any, partials: Any = None, *,
        recordid: int,
    ) -> None:  # fmt: skip
        rewrite: _Rewrite | None = getattr(_scope, "rewrite", None)
        _scope.rewrite = None
        if (
            rewrite is not None
            and rewrite.recordid == recordid
            and rewrite.new is doc
            and rewrite.changed is not None
        ):
            indexes = rewrite.changed
        write_entries(self, db, coll, doc, indexes, partials, recordid=recordid)

    return {
        "_chunk_doc_update_checked": _forgetting_on_error(store._chunk_doc_update_checked),
        "_unique_conflict": announce,
        "_delete_index_entries": delete,
        "_write_index_entries": write,
    }


def _same_entries(
    storage: Any, old: Any, new: Any, index: Any, partials: Any, options: Any
) -> bool:
    """Whether ``index`` holds the same entries for the old and the new document."""
    name, key_spec, sparse, _unique = index
    if storage._geo_type_of(key_spec) is not None:
        return False  # geo cells: always rewritten, as SecantusDB does
    partial = partials.get(name) if partials is not None else None
    if partial is not None:
        covered = storage.matches(old, partial)
        if covered != storage.matches(new, partial):
            return False
        if not covered:
            return True  # in the index neither before nor after
    collation = storage._parse_index_collation(options.get(name, {}).get("collation"))
    keys = functools.partial(
        storage._index_key_variants, key_spec=key_spec, sparse=sparse, collation=collation
    )
    return list(keys(old)) == list(keys(new))


def _forgetting_on_error(checked_update: Callable[..., Any]) -> Callable[..., Any]:
    """One document's checked update, its announced rewrite dropped if it is refused."""

    @functools.wraps(checked_update)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return checked_update(self, *args, **kwargs)
        except BaseException:
            # The chunk keeps going without this document (it commits what came before):
            # whatever its index entries see next is not its rewrite.
            _scope.rewrite = None
            raise

    return checked


def _updating(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def update(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(_scope, "updating", False), getattr(_scope, "rewrite", None)
        _scope.updating, _scope.rewrite = True, None
        try:
            return method(self, *args, **kwargs)
        finally:
            _scope.updating, _scope.rewrite = outer

    return update


class _UnixListener(socket.socket):
    """A listening unix socket that names addresses the way SecantusDB expects them:
    ``(host, port)`` pairs, for its log lines, thread names and ``whatsmyuri``."""

    path = ""

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _unnamed_peer = super().accept()
        return conn, (self.path, 0)

    def getsockname(self) -> tuple[str, int]:
        return (self.path, 0)


def _unix_socket_server(server_class: Any) -> None:
    """``--host /path.sock``: listen on that unix socket, not TCP (see the module docstring)."""
    tcp_start, original_stop = server_class.start, server_class.stop

    @functools.wraps(tcp_start)
    def start(self: Any) -> None:
        path = self.host
        if not (isinstance(path, str) and path.startswith("/")):
            return tcp_start(self)
        if self._socket is not None:
            raise RuntimeError("server is already started")
        # A socket file left by a killed server. Storage is open (the constructor opened
        # WiredTiger, one process per storage path), so no live server of ours is on it.
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        listener = _UnixListener(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.path = path
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen()
        self._socket, self.port = listener, 0
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._serve_forever, name="secantus-accept", daemon=True
        )
        self._thread.start()
        logger.info("secantus listening on unix socket %s", path)
        return None

    @functools.wraps(original_stop)
    def stop(self: Any) -> None:
        listener = self._socket
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        original_stop(self)

    server_class.start, server_class.stop = start, stop


def apply_patch() -> bool:
    """Apply the patches (see the module docstring); return whether they were applied."""
    import secantus
    from secantus import query, server, storage

    version = getattr(secantus, "__version__", "?")
    store = storage.Storage
    retry = getattr(storage, "_retry_write_conflicts", None)
    chunks: list[Any] = [getattr(store, name, None) for name in CHUNK_METHODS]
    if (
        version not in PATCHED_VERSIONS
        or retry is None
        or not all(hasattr(store, name) for name in ("_iter_indexes", "get_profile", "set_profile"))
        or not hasattr(query, "_op_matches")
        or not hasattr(getattr(server, "SecantusDBServer", None), "_serve_forever")
        or not all(hasattr(store, name) for name in REWRITE_METHODS)
        or not all(
            hasattr(storage, name)
            for name in ("_geo_type_of", "matches", "_parse_index_collation", "_index_key_variants")
        )
        or any(not hasattr(method, "__wrapped__") for method in chunks)
    ):
        logger.warning("SecantusDB %s runs unpatched (the patches were checked on %s)",
                       version, ", ".join(sorted(PATCHED_VERSIONS)))  # fmt: skip
        return False
    store._iter_indexes = _memoized_catalog(store._iter_indexes)
    for name, method in zip(CHUNK_METHODS, chunks, strict=True):
        # Inside the retry wrapper, so that every retried attempt starts a fresh memo.
        inner = method.__wrapped__
        if name in UPDATE_METHODS:
            inner = _updating(inner)
        setattr(store, name, retry(_in_memo_scope(inner)))
    for name, method in _unchanged_entries_kept(storage).items():
        setattr(store, name, method)
    store.get_profile, store.set_profile = _cached_profile_reads(
        store.get_profile, store.set_profile
    )
    query._op_matches = _string_sets(query._op_matches)
    _unix_socket_server(server.SecantusDBServer)
    logger.info(
        "SecantusDB %s: index catalog read once per statement chunk, profiling level cached,"
        " $in over strings as a set, unchanged index entries kept by updates,"
        " unix socket listener",
        version,
    )
    return True


def main() -> int:
    """Patch, then run SecantusDB's own command line with our arguments."""
    from secantus.cli import main as secantus_main

    # SecantusDB configures the root logger from its own settings; ours only says what ran.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not apply_patch() and _wants_unix_socket(sys.argv[1:]):
        logger.error("this SecantusDB version cannot listen on a unix socket (--host PATH)")
        return 2
    return int(secantus_main(sys.argv[1:]) or 0)


def _wants_unix_socket(argv: list[str]) -> bool:
    hosts = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--host"]
    return any(host.startswith("/") for host in hosts)


if __name__ == "__main__":
    raise SystemExit(main())
