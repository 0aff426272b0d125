"""Token datasets as training reads them: one or many shards seen as one stream, and mixtures.

A dataset is the virtual concatenation of its shards (design: issue #21 §3): ``NAME.json`` as a
manifest listing ``NAME-00000.bin``, ..., or today's single ``.bin`` + ``.json``, or a directory
or glob of those. Offsets are global, so a window may span two shards and a one-shard dataset
reads exactly as the single file always did.

Shards are memory-mapped only when a window touches them, and at most ``MAX_OPEN_SHARDS`` maps
are kept (least recently used first out): every map holds a file descriptor, and hundreds of
shards must not exhaust the process's limit or cost hundreds of opens before step 1.
"""

from __future__ import annotations

import glob
import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmkit.data import manifest
from lmkit.data.paths import resolve_token_file
from lmkit.data.shard_files import file_sha256
from lmkit.data.tokens import TokenFileMeta, meta_path, read_meta
from lmkit.errors import DataError
from lmkit.settings_mixture import DataSource, default_name

MAX_OPEN_SHARDS = 64
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Shard:
    """One ``.bin`` of a dataset and where it sits in the dataset's stream."""

    path: Path
    num_tokens: int
    dtype: str
    offset: int  # global position of its first token
    sha256: str | None = None  # from the manifest, checked by ``TokenData.verify``

    @property
    def index_path(self) -> Path:
        """Its document index (start offsets, local to this shard), beside it."""
        return self.path.with_suffix(".idx")


class TokenData:
    """A dataset: shards as one stream of ``num_tokens`` ids, with what their metadata records.

    Args:
        name: the dataset's name (a manifest's ``name``, else the file's stem).
        path: what was opened (manifest, ``.bin``, directory or glob), for messages.
        shards: in stream order, offsets already assigned.
        info: ``vocab_size``, ``tokenizer_hash``, ``tokenizer_dir``, ``source_bytes``,
            ``num_documents``, ``eot_id`` (each may be None).
        max_open: most shards memory-mapped at once.
    """

    def __init__(self, name: str, path: Path, shards: list[Shard], info: dict[str, Any], max_open: int = MAX_OPEN_SHARDS):
        self.name, self.path, self.shards = name, Path(path), shards
        self.vocab_size: int | None = info.get("vocab_size")
        self.tokenizer_hash: str | None = info.get("tokenizer_hash")
        self.tokenizer_dir: str | None = info.get("tokenizer_dir")
        self.source_bytes: int | None = info.get("source_bytes")
        self.num_documents: int | None = info.get("num_documents")
        self.eot_id: int | None = info.get("eot_id")
        self.num_tokens = sum(s.num_tokens for s in shards)
        self.dtype = "uint32" if any(s.dtype == "uint32" for s in shards) else "uint16"
        self._starts = np.array([s.offset for s in shards], dtype=np.int64)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()  # the prefetch thread and the evaluation read at once
        self._documents: np.ndarray | None = None
        self.maps_opened = 0  # memory maps made so far (tests check laziness with it)

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return f"TokenData({self.name!r}, {self.num_tokens:,} tokens in {len(self.shards)} shard(s) from {self.path})"

    @property
    def open_maps(self) -> int:
        """Shards memory-mapped right now."""
        return len(self._maps)

    def meta(self) -> TokenFileMeta:
        """The dataset described as one token file's metadata (what older callers read)."""
        return TokenFileMeta(dtype=self.dtype, num_tokens=self.num_tokens, vocab_size=self.vocab_size,
                             tokenizer_hash=self.tokenizer_hash, tokenizer_dir=self.tokenizer_dir,
                             source=str(self.path), source_bytes=self.source_bytes)

    def _map(self, k: int) -> np.ndarray:
        with self._lock:
            m = self._maps.get(k)
            if m is not None:
                self._maps.move_to_end(k)
                return m
            shard = self.shards[k]
            try:
                # mmap + frombuffer instead of np.memmap: a fifth of the cost per map, which counts
                # when a dataset has more shards than the LRU holds and maps keep being replaced.
                with open(shard.path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
                m = np.frombuffer(mm, dtype=np.dtype(shard.dtype).newbyteorder("<"), count=shard.num_tokens)
            except (OSError, ValueError) as e:
                raise DataError(f"{shard.path}: shard of {self.path} cannot be read ({getattr(e, 'strerror', None) or e}); "
                                "it was removed or truncated since the run started: re-encode the dataset") from None
            self.maps_opened += 1
            self._maps[k] = m
            if len(self._maps) > self._max_open:
                self._maps.popitem(last=False)  # its descriptor closes once no window views it
            return m

    def window(self, start: int, n: int) -> np.ndarray:
        """Ids ``start .. start + n - 1`` of the stream, read across shard boundaries.

        Within one shard this is a view of its memory map (nothing is copied or paged in until
        read); across shards the pieces are concatenated.
        """
        if start < 0 or n < 0 or start + n > self.num_tokens:
            raise IndexError(f"window {start}+{n} outside {self.num_tokens} tokens")
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        local = start - self.shards[k].offset
        first = self._map(k)[local : local + n]
        if len(first) == n:
            return first
        pieces, got = [first], len(first)
        while got < n:
            k += 1
            piece = self._map(k)[: n - got]
            pieces.append(piece)
            got += len(piece)
        return np.concatenate(pieces)

    def __getitem__(self, key: slice) -> np.ndarray:
        """``data[a:b]`` (step 1 only), so code written for one memory map reads a dataset too."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenData supports contiguous slices only")
        start, stop, _ = key.indices(self.num_tokens)
        return self.window(start, max(stop - start, 0))

    def documents(self) -> np.ndarray | None:
        """Global start offset of every document (uint64, ascending), from the shards' ``.idx``.

        Loaded once, on first call. None when a shard has no index (data from before indexes).

        Raises:
            DataError: an index that is not a whole number of uint64s, not ascending, or points
                outside its shard.
        """
        if self._documents is not None:
            return self._documents
        parts = []
        for shard in self.shards:
            if not shard.index_path.is_file():
                return None
            raw = shard.index_path.read_bytes()
            if len(raw) % 8:
                raise DataError(f"{shard.index_path}: {len(raw)} bytes is not a whole number of uint64 offsets; re-encode the dataset")
            local = np.frombuffer(raw, dtype="<u8")
            if local.size and (local[-1] >= shard.num_tokens or np.any(np.diff(local.astype(np.int64)) <= 0)):
                raise DataError(f"{shard.index_path}: document offsets are not ascending within the shard's "
                                f"{shard.num_tokens} tokens; re-encode the dataset")
            parts.append(local + np.uint64(shard.offset))
        self._documents = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return self._documents

    def verify(self, hashed: Callable[[int], None] | None = None) -> int:
        """Hash every shard against the sha256 its manifest records (reads the whole dataset).

        Args:
            hashed: Told the byte count of each chunk read (for progress).

        Returns:
            The number of shards checked (those without a recorded sha256 are not).

        Raises:
            DataError: naming the first shard whose content differs.
        """
        checked = 0
        for shard in self.shards:
            if shard.sha256 is None:
                continue
            digest = file_sha256(shard.path, hashed)
            want = shard.sha256.removeprefix("sha256:")
            if digest != want:
                raise DataError(f"{shard.path}: content differs from {self.path}'s record (sha256 {digest[:12]}..., "
                                f"expected {want[:12]}...): the shard was altered; re-encode the dataset")
            checked += 1
        return checked


# ---------------------------------------------------------------------------------- opening


def _is_manifest(path: Path) -> bool:
    try:
        raw = manifest.load_manifest_json(path)
    except DataError:
        return False
    return manifest.is_manifest(raw)


def read_manifest(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A dataset manifest, validated by ``lmkit.data.manifest``: ``(top-level info, shard entries)``.

    Raises:
        DataError: naming the file and field at fault, or the shard that is missing or altered.
    """
    m = manifest.read_manifest(path)
    info = {"name": m.name, "dtype": m.dtype, "vocab_size": m.vocab_size, "num_tokens": m.num_tokens,
            "num_documents": m.num_documents, "source_bytes": m.source_bytes, "eot_id": m.eot_id,
            "tokenizer_hash": m.tokenizer_hash, "tokenizer_dir": m.tokenizer_dir}
    entries = [{"file": s.file, "num_tokens": s.num_tokens, "num_documents": s.num_documents,
                "bytes": s.bytes, "sha256": s.sha256} for s in m.shards]
    return info, entries


def _from_manifest(path: Path) -> TokenData:
    info, entries = read_manifest(path)
    itemsize = np.dtype(info["dtype"]).itemsize
    shards, offset = [], 0
    for entry in entries:
        file = (path.parent / entry["file"]).resolve()
        n = entry["num_tokens"]
        # A stat per shard, no open: a missing or resized shard is named before training starts.
        try:
            size = file.stat().st_size
        except OSError:
            raise DataError(f"{path}: lists shard {entry['file']}, which is missing ({file}); restore it or re-encode the dataset") from None
        if size != n * itemsize or (entry.get("bytes") is not None and size != entry["bytes"]):
            raise DataError(f"{file}: {size} bytes, but {path.name} records {n} {info['dtype']} tokens "
                            f"({n * itemsize} bytes): the shard was altered or truncated; re-encode the dataset")
        if n:
            shards.append(Shard(file, n, info["dtype"], offset, entry.get("sha256")))
        offset += n
    return TokenData(info.get("name") or default_name(path), path, shards, info)


def _same_tokenizer(a: TokenFileMeta | TokenData, b: TokenFileMeta | TokenData) -> bool:
    if a.tokenizer_hash and b.tokenizer_hash:
        return a.tokenizer_hash == b.tokenizer_hash
    return a.vocab_size == b.vocab_size or a.vocab_size is None or b.vocab_size is None


def _tokenizer_name(d: TokenFileMeta | TokenData) -> str:
    return f"{d.tokenizer_hash or d.tokenizer_dir or 'no tokenizer recorded'}, {d.vocab_size if d.vocab_size is not None else '?'} ids"


def _from_bins(name: str, path: Path, bins: Sequence[Path]) -> TokenData:
    """Token files (each with its ``.json``) as the shards of one dataset, in the order given."""
    shards, offset, first = [], 0, None
    metas: list[tuple[Path, TokenFileMeta]] = []
    for b in bins:
        meta = read_meta(b)  # validates it, and that the .bin's size matches
        if first is None:
            first = (b, meta)
        elif not _same_tokenizer(first[1], meta):
            raise DataError(f"{first[0]} and {b} (both in {path}) were encoded with different tokenizers "
                            f"({_tokenizer_name(first[1])}; {_tokenizer_name(meta)}); encode them with one tokenizer")
        if meta.num_tokens:
            shards.append(Shard(Path(b).resolve(), meta.num_tokens, meta.dtype, offset, meta.sha256))
        offset += meta.num_tokens
        metas.append((b, meta))
    assert first is not None  # callers pass at least one file
    def total(key: str) -> int | None:
        values = [getattr(m, key) for _, m in metas]
        return None if any(v is None for v in values) else sum(values)
    info = {"vocab_size": max((m.vocab_size for _, m in metas if m.vocab_size is not None), default=None),
            "tokenizer_hash": first[1].tokenizer_hash, "tokenizer_dir": first[1].tokenizer_dir,
            "source_bytes": total("source_bytes"), "num_documents": total("num_documents"),
            "eot_id": first[1].eot_id}
    return TokenData(name, path, shards, info)


def open_dataset(path: str | Path, notice: Callable[[str], None] = lambda m: None) -> TokenData:
    """Open what a data path names as one dataset (design §4).

    Accepted: a manifest ``.json``; a token file's ``.json`` or ``.bin``; a text file of token
    ids (converted once, as before); a directory (its one manifest, else every ``*.bin`` in it,
    sorted); a glob of ``.bin`` files (``data/**/*.bin``, sorted).

    Raises:
        DataError: nothing there, an empty glob, several manifests in one directory, a listed
            shard missing or resized, shards from different tokenizers, or unusable files.
    """
    text = str(path)
    p = Path(path)
    if any(c in text for c in _GLOB_CHARS) and not p.exists():
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if m.endswith(".bin"))
        if not matches:
            raise DataError(f"{text}: the glob matches no .bin token files; check the pattern (quote it so the shell leaves it alone)")
        return _from_bins(default_name(text.split("*")[0] or "data"), p, matches)
    if p.is_dir():
        manifests = [j for j in sorted(p.glob("*.json")) if _is_manifest(j)]
        if len(manifests) > 1:
            raise DataError(f"{p}: holds {len(manifests)} dataset manifests ({', '.join(m.name for m in manifests[:4])}); pass one of them")
        if manifests:
            return _from_manifest(manifests[0])
        bins = sorted(p.glob("*.bin"))
        if not bins:
            raise DataError(f"{p}: directory holds no dataset manifest and no .bin token files; encode data into it with `lmkit tokenize encode`")
        lone = [b for b in bins if not meta_path(b).is_file()]
        if lone:
            raise DataError(f"{lone[0]}: has no {meta_path(lone[0]).name} beside it, so {p} cannot be read as a dataset; "
                            "remove it or re-encode it")
        return _from_bins(p.name or "data", p, bins)
    if p.suffix == ".json" and p.is_file():
        if _is_manifest(p):
            return _from_manifest(p)
        if p.with_suffix(".bin").is_file():
            return _from_bins(p.stem, p, [p.with_suffix(".bin")])  # one token file, named by its metadata
    bin_path = resolve_token_file(p, notice)
    return _from_bins(bin_path.stem, bin_path, [bin_path])


class Mixture:
    """The datasets one run reads, with each one's share of the windows.

    A plain data path is a "mixture" of one dataset (``is_mixture`` False), read exactly as one
    dataset always was.
    """

    def __init__(self, sources: list[TokenData], names: list[str], weights: Sequence[float], is_mixture: bool):
        self.sources, self.names = sources, names
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.is_mixture = is_mixture

    def __len__(self) -> int:
        return len(self.sources)

    def describe(self) -> str:
        """``web 70.0% (2 shards, 1.2M tokens), code 30.0% (...)`` for the start-of-run notice."""
        return ", ".join(f"{n} {100 * w:.1f}% ({d.path}: {len(d.shards)} shard(s), {d.num_tokens:,} tokens)"
                         for n, w, d in zip(self.names, self.weights, self.sources))


def open_data(value: Path | str | list[DataSource], notice: Callable[[str], None] = lambda m: None) -> Mixture:
    """A settings data value (one path, or sources with weights) opened as a ``Mixture``.

    Raises:
        DataError: a source cannot be opened (``open_dataset``), or two sources were encoded with
            different tokenizers (naming both).
    """
    if isinstance(value, list):
        datasets = []
        for s in value:
            try:
                datasets.append(open_dataset(s.path, notice))
            except DataError as e:
                raise DataError(f"mixture source {s.name!r}: {e}") from None
        mix = Mixture(datasets, [s.name for s in value], [s.weight for s in value], True)
    else:
        data = open_dataset(value, notice)
        mix = Mixture([data], [data.name], [1.0], False)
    check_same_tokenizer(mix.sources)
    return mix


def check_same_tokenizer(datasets: Sequence[TokenData]) -> None:
    """Refuse datasets from different tokenizers, naming both and each one's tokenizer.

    Raises:
        DataError: the first pair that differs.
    """
    for d in datasets[1:]:
        if not _same_tokenizer(datasets[0], d):
            a = datasets[0]
            raise DataError(f"{a.path} and {d.path} were encoded with different tokenizers ({_tokenizer_name(a)}; "
                            f"{_tokenizer_name(d)}); one run must read data from one tokenizer: encode both with the same one")
