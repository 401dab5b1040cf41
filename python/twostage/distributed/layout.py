"""A sharded collection on disk: one ordinary collection folder per shard, and a top manifest.

```
TOP/shards.json    format and version, the shard count, the hash rule, the encoder identity,
                   each shard's index settings and the shard folders (written last,
                   atomically)
TOP/shard-000/     a twostage collection: manifest.json, store.sqlite, index.tsidx, lexical/
TOP/shard-001/     ...
```

A document lives in shard ``shard_of(id, n)``: the first 8 bytes of the BLAKE2b hash of its
UTF-8 id, little-endian, modulo ``n``. The rule is written into the manifest and never
depends on the process (Python's ``hash()`` is salted per process, so it would scatter a
document across shards between runs). Each shard folder is a normal collection: open it
with :meth:`twostage.collection.Collection.open`, check it with ``twostage index check``,
and a writable open repairs its index from its store, as for any other.

Nothing here needs Ray: :func:`split_collection` re-shards a collection folder on one
machine (copying stored embeddings, no re-encoding), and :mod:`twostage.distributed.ingest`
builds one from a corpus on a cluster. The shards come alive as Ray actors in
:class:`twostage.distributed.ShardedCollection`.

>>> shard_of("doc-17", 3)
0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage.collection import MANIFEST, Collection, index_settings, read_manifest
from twostage.document import Document
from twostage.errors import CorruptStore, InvalidArgument

log = logging.getLogger("twostage")

LAYOUT = "shards.json"
FORMAT = "twostage-sharded-collection"
FORMAT_VERSION = 1
HASH_RULE = "blake2b-8-le mod n"
#: The most shards a layout may have: a shard is an actor holding an index in memory, and
#: the router's global key is ``local_key * n + shard`` (u64, so keys below 2**64 / n).
MAX_SHARDS = 4096


def shard_of(doc_id: str, n: int) -> int:
    """The shard that owns ``doc_id`` among ``n``: the manifest's hash rule.

    >>> [shard_of(i, 4) for i in ("doc-1", "doc-2", "doc-3", "doc-4")]
    [2, 1, 2, 3]
    """
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def shard_dir(i: int) -> str:
    """The folder name of shard ``i`` inside the top folder."""
    return f"shard-{i:03d}"


@dataclass(frozen=True)
class Layout:
    """A sharded collection's top manifest, read and checked (:func:`read_layout`)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def n_shards(self) -> int:
        """How many shards."""
        return int(self.manifest["shards"])

    @property
    def shard_paths(self) -> list[Path]:
        """Each shard's collection folder, in shard order."""
        return [self.path / d for d in self.manifest["shard_dirs"]]

    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder identity every shard was embedded with (a collection manifest's)."""
        return dict(self.manifest["encoder"])

    def shard_of(self, doc_id: str) -> int:
        """The shard that owns ``doc_id``."""
        return shard_of(doc_id, self.n_shards)


def layout_manifest(shard_manifest: dict[str, Any], n_shards: int) -> dict[str, Any]:
    """The top manifest for ``n_shards`` shards made like the collection whose manifest is
    ``shard_manifest`` (encoder, index settings, lexical index)."""
    check_shards(n_shards)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "shards": n_shards,
        "hash": HASH_RULE,
        "shard_dirs": [shard_dir(i) for i in range(n_shards)],
        "encoder": shard_manifest["encoder"],
        "tokens": shard_manifest["tokens"],
        "dim": shard_manifest["dim"],
        "embedding_dtype": shard_manifest.get("embedding_dtype", "f16"),
        "lexical": bool(shard_manifest.get("lexical")),
        "metric": shard_manifest["metric"],
        # Each shard's index settings, as Collection.create takes them ("shards" there is
        # the index's own internal split, not this collection's).
        "index": index_settings(shard_manifest),
        "created": now,
    }


def check_shards(n_shards: object) -> int:
    """``n_shards`` as a checked shard count."""
    if isinstance(n_shards, bool) or not isinstance(n_shards, int):
        raise InvalidArgument(f"n_shards must be an integer, not {n_shards!r}")
    if not 1 <= n_shards <= MAX_SHARDS:
        raise InvalidArgument(f"n_shards must be in 1..{MAX_SHARDS}, not {n_shards}")
    return n_shards


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """The sharded collection in ``path``, its manifest checked for format, version and
    shape, and every shard's manifest for the same encoder."""
    top = Path(path)
    file = top / LAYOUT
    if not file.is_file():
        if (top / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{top} is a single collection, not a sharded one (no {LAYOUT}): open it with "
                "Collection.open, or shard it with ShardedCollection.from_collection"
            )
        if any(top.glob("shard-*")):
            raise FileNotFoundError(
                f"{top} has shard folders but no {LAYOUT}: its build or split was interrupted "
                "before the manifest was written. Run the same command again to finish it"
            )
        raise FileNotFoundError(f"{top} is not a sharded twostage collection: no {LAYOUT}")
    try:
        m = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CorruptStore(f"{file}: unreadable manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CorruptStore(f"{file}: not a sharded collection manifest")
    if m.get("version") != FORMAT_VERSION:
        raise CorruptStore(
            f"{file}: sharded format version {m.get('version')}, this twostage reads "
            f"{FORMAT_VERSION}"
        )
    if m.get("hash") != HASH_RULE:
        raise CorruptStore(
            f"{file}: hash rule {m.get('hash')!r}; this twostage routes by {HASH_RULE!r}"
        )
    n = m.get("shards")
    dirs = m.get("shard_dirs")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise CorruptStore(f"{file}: shards must be a whole number in 1..{MAX_SHARDS}, not {n!r}")
    if (
        not isinstance(dirs, list)
        or len(dirs) != n
        or not all(isinstance(d, str) and d and "/" not in d and d != ".." for d in dirs)
    ):
        raise CorruptStore(f"{file}: shard_dirs must name {n} folders inside {top}, not {dirs!r}")
    layout = Layout(top, m)
    want = m["encoder"]["fingerprint"]
    for p in layout.shard_paths:
        got = read_manifest(p)["encoder"]["fingerprint"]
        if got != want:
            raise CorruptStore(
                f"{p} was embedded by encoder fingerprint {got}; {file} says {want}: a shard "
                "from another collection"
            )
    return layout


def write_layout(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write the top manifest atomically (temporary file, fsync, rename, fsync the folder):
    the switch that makes a built or split collection exist."""
    top = Path(path)
    tmp = top / (LAYOUT + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, top / LAYOUT)
    fd = os.open(top, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_collection(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n_shards: int,
    *,
    batch: int = 2048,
) -> Layout:
    """Re-shard the collection in ``source`` into ``n_shards`` collections under ``out``.

    Every document goes to its shard with its stored embedding and token ids: nothing is
    re-encoded, so each vector is bit for bit the source's and an exact search over the
    shards finds what one over the source finds. The shards get the source's encoder, index
    settings and lexical index. ``source`` is only read. ``shards.json`` is written last: a
    split killed half way leaves no sharded collection, and running it again starts over
    (it clears the shard folders that the interrupted split made, and nothing else).

    >>> split_collection("scifact/", "scifact-3/", 3).n_shards  # doctest: +SKIP
    3
    """
    check_shards(n_shards)
    src, top = Path(source), Path(out)
    if (top / LAYOUT).exists():
        raise FileExistsError(f"{top} already holds a sharded collection; open it instead")
    if src.resolve() == top.resolve():
        raise InvalidArgument("the sharded collection needs its own folder: out must differ")
    m = read_manifest(src)
    top.mkdir(parents=True, exist_ok=True)
    mark = {"split.source": str(src.resolve())}
    for i in range(n_shards):
        _clear_interrupted(top / shard_dir(i), mark)
    with Collection.open(src, read_only=True) as col:
        shards = [
            Collection.create(
                top / shard_dir(i),
                col.encoder,
                **index_settings(m),
                embedding_dtype=m.get("embedding_dtype"),
                lexical=bool(m.get("lexical")),
                meta=mark,
            )
            for i in range(n_shards)
        ]
        try:
            keys: list[int] = []
            for key in col.store.keys():
                keys.append(key)
                if len(keys) >= batch:
                    _copy(col, shards, keys)
                    keys = []
            _copy(col, shards, keys)
            documents = len(col)
        finally:
            for s in shards:
                s.close()  # snapshots each index: the next open replays nothing
    manifest = layout_manifest(m, n_shards)
    manifest["source"] = {"split_from": str(src.resolve()), "documents": documents}
    write_layout(top, manifest)
    return read_layout(top)


def _copy(col: Collection, shards: list[Collection], keys: list[int]) -> None:
    if not keys:
        return
    arr = np.asarray(keys, dtype=np.uint64)
    stored = col.fetch(arr, tokens=True)
    vectors = col.store.embeddings(arr, missing_nan=True)
    parts: list[list[int]] = [[] for _ in shards]
    for row, d in enumerate(stored):
        if d is not None:  # gone since the key list was read (a writer is running)
            parts[shard_of(d.id, len(shards))].append(row)
    for shard, rows in zip(shards, parts, strict=True):
        if not rows:
            continue
        docs = [stored[r] for r in rows]
        tokens = [d.tokens for d in docs if d is not None and d.tokens is not None]
        shard.add_embedded(
            [Document(d.id, d.text, d.title, d.metadata) for d in docs if d is not None],
            vectors[rows],
            tokens if len(tokens) == len(rows) else None,
        )


def _clear_interrupted(folder: Path, mark: dict[str, str]) -> None:
    """Remove a shard folder that an interrupted split of the same source made; refuse
    anything else that is in the way."""
    if not (folder / MANIFEST).exists():
        return  # nothing, or a creation killed early: Collection.create clears that itself
    with Collection.open(folder, read_only=True) as c:
        ours = all(c.store.get_meta(k, "") == v for k, v in mark.items())
    if not ours:
        raise FileExistsError(f"{folder} holds a collection this split did not make; move it away")
    log.warning("%s: removing what an interrupted split left", folder)
    shutil.rmtree(folder)


__all__ = [
    "HASH_RULE",
    "LAYOUT",
    "Layout",
    "check_shards",
    "layout_manifest",
    "read_layout",
    "shard_dir",
    "shard_of",
    "split_collection",
    "write_layout",
]
