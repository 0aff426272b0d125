"""The byte-level BPE ``Tokenizer``: text -> ids -> text, GPT-2 compatible.

Encoding: split the text around special tokens (longest first), cut the rest into pretokens
with GPT-2's pattern, and turn each pretoken's bytes into ids by applying merges, always the
lowest-ranked (earliest learned) adjacent pair first. A pretoken's ids never depend on its
neighbours, so they are cached: real text repeats a small set of words.

Ids are whatever the vocabulary says, as long as they are dense (``0..N-1``): lmkit-trained
vocabularies number the 256 bytes 0..255, then merges in order, then special tokens, while GPT-2
files keep GPT-2's own ids.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmkit.errors import TokenizerError
from lmkit.tokenizer import directory as tokdir
from lmkit.tokenizer import files
from lmkit.tokenizer.pretokenize import PRETOKEN_RE, safe_cut, special_splitter
from lmkit.tokenizer.tables import check_dense, check_merges, content_hash, raise_duplicate

if TYPE_CHECKING:
    import numpy as np

    from lmkit.tokenizer.fast import FastEncoder

# Cached pretokens before the cache is emptied: bounds memory on endless streams of new words.
CACHE_LIMIT = 1 << 20
# encode_iterable buffers about this much text before looking for a safe place to cut it.
STREAM_BUFFER = 1 << 16
NO_MERGE = 1 << 62  # rank of a pair that has no merge: above every real rank


class Tokenizer:
    """Byte-level BPE tokenizer.

    Args:
        vocab: id -> token bytes, ids dense (``0..N-1``). Must hold all 256 single bytes and
            every merge result.
        merges: ``(left, right)`` byte pairs in rank order (the order they were learned).
        special_tokens: Strings encoded as one id each wherever they occur in text; each must
            be in ``vocab``. ``None`` treats as special every vocabulary entry that is neither a
            single byte nor a merge result (for GPT-2's files: ``<|endoftext|>``).
        merge_location: Describes merge ``i`` in error messages (file readers pass ``file:line``).

    Raises:
        TokenizerError: ids that are not ``0..N-1``, a merge whose parts or result are not in
            the vocabulary, a missing byte, duplicate token bytes, or a special token the
            vocabulary lacks.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
        *,
        merge_location: Callable[[int], str] | None = None,
    ):
        self.vocab = dict(vocab)
        self.merges = list(merges)
        check_dense(self.vocab)
        where = merge_location or (lambda i: f"merge {i + 1}")
        self._id_of: dict[bytes, int] = {token: idx for idx, token in self.vocab.items()}
        if len(self._id_of) < len(self.vocab):
            raise_duplicate(self.vocab)
        id_of = self._id_of
        missing = [b for b in range(256) if bytes([b]) not in id_of]
        if missing:
            raise TokenizerError(f"vocabulary lacks {len(missing)} of the 256 single bytes (first: {missing[0]:#04x})")
        self._byte_ids = [id_of[bytes([b])] for b in range(256)]
        # (left id, right id) -> rank, and rank -> merged id: what the encoder looks up per pair.
        # Built by comprehensions (GPT-2 has 50,000 merges and this runs at every load); the
        # loop in _check_merges runs only to name a bad merge.
        try:
            pairs = [(id_of[left], id_of[right]) for left, right in self.merges]
            self._merged: list[int] = [id_of[left + right] for left, right in self.merges]
        except KeyError:
            check_merges(self.merges, id_of, where)
            raise  # unreachable: _check_merges raised; kept for type checkers
        self._rank_of: dict[tuple[int, int], int] = dict(zip(pairs, range(len(pairs))))
        if len(self._rank_of) < len(pairs):  # a pair listed twice: the first rank is the one used
            self._rank_of = {}
            for rank, pair in enumerate(pairs):
                self._rank_of.setdefault(pair, rank)

        reachable = set(self._byte_ids).union(self._merged)  # ids of single bytes and merge results
        self.vocab_specials = sorted(t.decode("utf-8", "replace") for i, t in self.vocab.items() if i not in reachable)
        if special_tokens is None:
            special_tokens = self.vocab_specials
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens))
        self._special_ids: dict[str, int] = {}
        for s in self.special_tokens:
            if not s or s.encode("utf-8") not in self._id_of:
                raise TokenizerError(f"special token {s!r} is not in the vocabulary (known: {', '.join(self.vocab_specials) or 'none'})")
            self._special_ids[s] = self._id_of[s.encode("utf-8")]
        self._splitter = special_splitter(self.special_tokens)
        self._special_bytes = [s.encode("utf-8") for s in self.special_tokens]
        self._cache: dict[str, list[int]] = {}
        self._fast: FastEncoder | None | bool = False  # False: not built yet
        # content_hash by set of specials: vocab and merges do not change after construction
        # (the tables above are built from them once), so neither does their hash.
        self._hashes: dict[frozenset[str], str] = {}

    # --- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_files(
        cls, vocab_path: Path, merges_path: Path, special_tokens: Sequence[str] | None = None
    ) -> Tokenizer:
        """Load GPT-2 style ``vocab.json`` + ``merges.txt`` (GPT-2's own, or lmkit's).

        Args:
            vocab_path: Mapped token string -> id.
            merges_path: One merge per line, optional ``#version`` header.
            special_tokens: As in the constructor (``None``: detect them).

        Raises:
            TokenizerError: malformed files; errors name the file and line.
        """
        vocab = files.read_vocab(vocab_path)
        merges, lines = files.read_merges(merges_path)
        return cls(vocab, merges, special_tokens, merge_location=lambda i: f"{merges_path}:{lines[i]}")

    @classmethod
    def from_dir(cls, directory: Path, special_tokens: Sequence[str] | None = None) -> Tokenizer:
        """Load a tokenizer directory (``vocab.json``, ``merges.txt``, optional ``tokenizer.json``).

        The three files are read as one unit (``directory.read_dir``), and the content hash that
        ``tokenizer.json`` records is checked against them.

        Args:
            directory: As written by ``save`` or ``lmkit tokenize train``.
            special_tokens: The specials to recognise in text; default: those recorded in
                ``tokenizer.json``, or detected from the vocabulary when it is absent.

        Raises:
            TokenizerError: a missing or malformed file (naming it, and the line or key), or
                files that no longer match the hash ``tokenizer.json`` records (naming the file
                that changed).
        """
        where, raw = tokdir.read_dir(Path(directory))
        vocab_path, merges_path, meta_path = (where / name for name in files.TOKENIZER_FILES)
        for path in (vocab_path, merges_path):
            if raw[path.name] is None:
                raise TokenizerError(f"{path}: not found; is {directory} a tokenizer directory from `lmkit tokenize train`?")
        meta = files.parse_meta(raw[files.META_FILE], meta_path) if raw[files.META_FILE] is not None else None
        vocab = files.parse_vocab(raw[files.VOCAB_FILE], vocab_path)
        merges, lines = files.parse_merges(raw[files.MERGES_FILE], merges_path)
        if special_tokens is None and meta is not None:
            special_tokens = meta["special_tokens"]
        tok = cls(vocab, merges, special_tokens, merge_location=lambda i: f"{merges_path}:{lines[i]}")
        if meta is not None:
            _check_recorded(tok, meta, raw, where)
        return tok

    def save(self, directory: Path, *, force: bool = False) -> None:
        """Write ``vocab.json``, ``merges.txt`` (GPT-2 format) and ``tokenizer.json`` as one unit.

        Args:
            directory: Created if missing.
            force: Replace a directory that already holds a tokenizer (runs and token files
                may cite it by hash, so this is refused by default).

        Raises:
            TokenizerError: the directory holds a tokenizer (and not ``force``) or other files,
                or cannot be written.
            LockHeldError: another lmkit process is writing it.
        """
        with tokdir.claim_output(Path(directory), force=force) as out:
            out.write(self.serialize())

    def serialize(self) -> dict[str, bytes]:
        """The three files' bytes (``files.serialize``), e.g. for ``TokenizerOutput.write``."""
        meta = {"special_tokens": self.special_tokens, "vocab_size": self.vocab_size, "hash": self.hash}
        return files.serialize(self.vocab, self.merges, meta)

    # --- properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the embedding rows a model needs."""
        return max(self.vocab) + 1

    @property
    def hash(self) -> str:
        """A stable content hash of vocab, merges and special tokens, recorded in token files.

        The specials part is every special the vocabulary holds, so choosing which of them to
        recognise in text (``special_tokens=[...]``) does not change the hash.
        """
        return self._content_hash(set(self.special_tokens) | set(self.vocab_specials))

    def _content_hash(self, specials: set[str]) -> str:
        # Computed once per set of specials (a walk over the whole vocabulary): from_dir's check
        # and every later use of .hash share it.
        key = frozenset(specials)
        if key not in self._hashes:
            self._hashes[key] = content_hash(self.vocab, self.merges, key)
        return self._hashes[key]

    def token_id(self, special: str) -> int:
        """The id of a registered special token, e.g. ``token_id("<|endoftext|>")``."""
        if special not in self._special_ids:
            raise TokenizerError(f"{special!r} is not a registered special token")
        return self._special_ids[special]

    # --- encoding ------------------------------------------------------------------------------

    def _merge_bytes(self, piece: bytes) -> list[int]:
        """Apply merges to one pretoken: repeatedly merge the lowest-ranked adjacent pair.

        Only the leftmost occurrence is merged per step; any other occurrence of the same pair
        still has the lowest rank next step (a merge that uses the new token was learned later),
        so this equals merging every occurrence left to right ("aaa" -> "aa a").
        """
        ids = [self._byte_ids[b] for b in piece]
        get, merged = self._rank_of.get, self._merged
        # ranks[j] is the rank of the pair (ids[j], ids[j + 1]).
        ranks = [get(pair, NO_MERGE) for pair in zip(ids, ids[1:])]
        while ranks:
            best = min(ranks)
            if best == NO_MERGE:
                break
            i = ranks.index(best)
            new = merged[best]
            ids[i:i + 2] = (new,)
            # Only the pairs touching the merged token change: the ranks of old pairs i-1, i,
            # i+1 become those of (ids[i-1], new) and (new, ids[i+1]), where they exist.
            around = []
            if i > 0:
                around.append(get((ids[i - 1], new), NO_MERGE))
            if i + 1 < len(ids):
                around.append(get((new, ids[i + 1]), NO_MERGE))
            ranks[max(i - 1, 0):i + 2] = around
        return ids

    def _encode_plain(self, text: str, out: list[int]) -> None:
        # Text with no special tokens in it: pretokens, each looked up in the cache first.
        cache = self._cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        for piece in PRETOKEN_RE.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = cache[piece] = self._merge_bytes(piece.encode("utf-8"))
            out.extend(ids)

    def encode(self, text: str) -> list[int]:
        """Encode text to ids; registered special tokens in the text become their own ids.

        Example: with GPT-2's files, ``encode("Hello world<|endoftext|>")`` -> ``[15496, 995, 50256]``.
        """
        out: list[int] = []
        if self._splitter is None:
            self._encode_plain(text, out)
            return out
        for n, part in enumerate(self._splitter.split(text)):
            if n % 2:
                out.append(self._special_ids[part])
            elif part:
                self._encode_plain(part, out)
        return out

    def fast_encoder(self) -> FastEncoder | None:
        """This tokenizer's tiktoken-backed encoder (built on first use), or ``None`` where it
        cannot give exactly ``encode``'s ids (``FastEncoder.build`` says why at debug level)."""
        if self._fast is False:
            from lmkit.tokenizer.fast import FastEncoder

            self._fast = FastEncoder.build(self)
        return self._fast  # type: ignore[return-value]

    def __getstate__(self) -> dict:
        # Worker processes get the tokenizer pickled; they rebuild the engine if they use it
        # rather than receive its tables (megabytes) with every pickle.
        return {**self.__dict__, "_fast": False}

    def encode_array(self, text: str) -> np.ndarray:
        """``encode(text)`` as a ``uint32`` array, by the fast engine where it is exact.

        Example: with GPT-2's files, ``encode_array("Hello world")`` -> ``array([15496, 995])``.
        """
        from lmkit.tokenizer.fast import encode_array

        return encode_array(self, text)

    def safe_cut(self, text: str) -> int:
        """Where ``text`` can be cut so both halves encode as the whole would (0: nowhere)."""
        # Cut points are ASCII characters, so a position found in the ASCII-safe bytes view is
        # found at the same character index after mapping back; work on bytes for the search.
        raw = text.encode("utf-8")
        cut = safe_cut(raw, self._special_bytes)
        return len(raw[:cut].decode("utf-8")) if cut else 0

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Encode a stream of strings (e.g. a file's lines) lazily, in memory independent of its size.

        Text is buffered until it can be cut where no pretoken or special token spans the cut,
        so the ids equal ``encode("".join(iterable))``.

        Args:
            iterable: Strings, e.g. an open text file.

        Yields:
            Token ids.
        """
        buffer: list[str] = []
        size = 0
        for text in iterable:
            buffer.append(text)
            size += len(text)
            if size < STREAM_BUFFER:
                continue
            joined = "".join(buffer)
            cut = self.safe_cut(joined)
            if cut:
                yield from self.encode(joined[:cut])
                joined = joined[cut:]
            buffer, size = [joined], len(joined)
        yield from self.encode("".join(buffer))

    # --- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids stand for.

        Raises:
            TokenizerError: an id outside the vocabulary.
        """
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except KeyError as e:
            raise TokenizerError(f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_chunks(self, id_chunks: Iterable[Iterable[int]]) -> Iterator[str]:
        """Decode a stream of id chunks to text pieces, in memory independent of stream length.

        A character split between chunks is decoded whole (an incremental UTF-8 decoder holds
        the partial bytes), so ``"".join(decode_chunks(c))`` equals ``decode(all ids)``.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in id_chunks:
            yield decoder.decode(self.decode_bytes(chunk))
        yield decoder.decode(b"", final=True)


def _check_recorded(tok: Tokenizer, meta: dict, raw: dict[str, bytes | None], where: Path) -> None:
    # The hash is what runs and token files cite; compare it with one computed from the files,
    # over the specials tokenizer.json records (not those the caller chose to recognise).
    meta_path = where / files.META_FILE
    recorded = meta.get("hash")
    if recorded is not None:
        actual = tok._content_hash(set(meta["special_tokens"]) | set(tok.vocab_specials))
        if actual != recorded:
            digests = meta.get("files") or {}
            changed = [n for n in (files.VOCAB_FILE, files.MERGES_FILE)
                       if n in digests and raw[n] is not None and files.file_digest(raw[n]) != digests[n]]
            which = " and ".join(str(where / n) for n in changed) if changed else f"{where / files.VOCAB_FILE} or {where / files.MERGES_FILE}"
            verb = "were" if len(changed) > 1 else "was"
            raise TokenizerError(
                f"{which} {verb} changed after {meta_path} recorded hash {recorded} (the files now give {actual}); "
                "restore the original files, or train a new tokenizer with `lmkit tokenize train --force`"
            )
    size = meta.get("vocab_size")
    if size is not None and size != tok.vocab_size:
        raise TokenizerError(
            f"{meta_path}: records vocab_size {size}, but {where / files.VOCAB_FILE} holds {tok.vocab_size} ids; "
            "restore the original files, or train a new tokenizer with `lmkit tokenize train --force`"
        )
