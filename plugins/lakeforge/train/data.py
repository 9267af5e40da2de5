"""Stream a features partition from the lake into padded, length-bucketed training batches.

Nothing is downloaded whole: :class:`FeatureSource` opens exactly the Parquet files a features
commit lists as a ``pyarrow.dataset`` and splits them into row-group fragments. A *plan*
(:func:`FeatureSource.plan`) reads only the small ``split`` column of each row group, once, and cuts
the row groups into :class:`Unit` s (a row group, or a stride of its rows when there are fewer row
groups than shards) with their row count of the wanted split. :class:`LengthBucketedStream` (a torch
``IterableDataset``) then gives each shard — one per (rank, DataLoader worker) — its own units:

* every epoch the units are permuted (seeded by seed and epoch) and dealt round-robin to the shards;
  the rows of each unit are permuted too, so the on-disk order never reaches the model;
* rows are read one unit at a time (the row group is kept while its other strides are read) and
  gathered into buffers of ``batch_size * bucket_batches`` rows; a buffer is sorted by token length
  and cut into batches (length bucketing: a batch pads only to its own longest row), and the
  batches are shuffled;
* each batch is padded to its longest row, rounded up to ``pad_to_multiple_of`` (dynamic padding).

Tokens: the ``input_ids`` column when the features carry it and it holds what the profile asks for
(:func:`choose_token_source`: the features stage cut nothing, or cut at the profile's length or longer
on the same side; rows longer than the profile's ``max_length`` are then cut again on that side,
keeping [CLS] and [SEP]), else the ``text`` column tokenized on the fly — e.g. the gpu profile's 512
tokens from features tokenized for the cpu profile's 128.

Exact resume: the whole stream is a pure function of (plan, seed, shard), and the number of batches
in an epoch follows from the plan's row counts alone. So a stream built with ``start_batch=n`` skips
its first ``n`` batches by arithmetic — whole epochs and buffers without reading them — and yields
exactly what an uninterrupted stream would have yielded next. With DataLoader workers, batch ``j``
of a rank comes from worker ``j % workers`` (the DataLoader's round-robin), which fixes each
worker's own skip; a resumed loader starts at worker 0, so the workers' roles rotate by
``start_batch % workers``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lakeforge.errors import DataQualityError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("label", "split")
UNITS_PER_SHARD = 2  # at least this many units per shard and epoch, so epochs reorder data across shards


@dataclass(frozen=True)
class Unit:
    """Rows ``part::parts`` of one row-group fragment, and how many of them are in the wanted split."""

    fragment: int  # index into FeatureSource.fragments
    part: int  # stride offset
    parts: int  # stride
    rows: int  # rows of the split in this unit


def choose_token_source(has_input_ids: bool, token_stats: dict | None, max_length: int,
                        truncation_side: str) -> tuple[bool, str]:
    """``(use input_ids?, why)`` for a profile, from the features commit's ``stats["tokens"]``.

    The stored ids serve a profile when re-cutting them gives what tokenizing the text would: no row
    was truncated, or they were cut at ``max_length`` or longer on the same side. Unknown stats (no
    features commit, older features) trust the column.
    """
    if not has_input_ids:
        return False, "no input_ids column"
    if not token_stats or "max_length" not in token_stats:
        return True, "input_ids column (tokenization unrecorded)"
    stored, side = int(token_stats["max_length"]), token_stats.get("truncation_side", truncation_side)
    if not token_stats.get("truncated_share", 1.0):
        return True, f"input_ids (none cut at {stored})"
    if stored >= max_length and side == truncation_side:
        return True, f"input_ids (cut at {stored} {side}, profile {max_length} {truncation_side})"
    return False, f"text: input_ids were cut at {stored} {side}, the profile wants {max_length} {truncation_side}"


def retruncate(ids: Sequence[int], max_length: int, side: str) -> list[int]:
    """Cut a tokenized row (``[CLS] … [SEP]``) to ``max_length`` tokens, keeping both special tokens."""
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    keep = max_length - 2
    body = ids[1:-1]
    body = body[len(body) - keep:] if side == "left" else body[:keep]
    return [ids[0], *body, ids[-1]]


def pad_batch(rows: Sequence[Sequence[int]], labels: Sequence[int], pad_id: int, multiple: int,
              max_length: int) -> dict[str, torch.Tensor]:
    """Right-pad token rows to the batch's longest (rounded up to ``multiple``, at most ``max_length``)."""
    longest = max(len(r) for r in rows)
    width = max(longest, min(max_length, math.ceil(longest / multiple) * multiple))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor(list(labels), dtype=torch.long)}


def _rng(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative ints (stable across processes, unlike hash())."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def _split_mask(table: pa.Table, part: int, parts: int, split: str) -> np.ndarray:
    """Row indices of ``table`` in stride ``part::parts`` whose split is ``split`` (plan and read agree)."""
    idx = np.arange(part, table.num_rows, parts)
    col = table["split"].take(pa.array(idx)) if parts > 1 else table["split"]
    keep = pc.fill_null(pc.equal(col, split), False).to_numpy(zero_copy_only=False)
    return idx[keep]


class FeatureSource:
    """The Parquet files of one features partition, read through ``pyarrow.dataset`` (picklable)."""

    def __init__(self, paths: Sequence[str], filesystem=None, prefer_input_ids: bool = True):
        """
        Args:
            paths: files in the commit's order (``bucket/key`` for S3, local paths for a local filesystem).
            filesystem: a pyarrow filesystem (the lake's S3FileSystem); None is the local disk.
            prefer_input_ids: stream the ``input_ids`` column when there is one (else tokenize ``text``).
        """
        if not paths:
            raise DataQualityError("the features partition lists no files: nothing to train on")
        self.paths = list(paths)
        self.filesystem = filesystem
        self.prefer_input_ids = prefer_input_ids
        self._fragments: list | None = None
        self._schema: pa.Schema | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the files themselves
        return {"paths": self.paths, "filesystem": self.filesystem, "prefer_input_ids": self.prefer_input_ids,
                "_fragments": None, "_schema": None}

    def _open(self) -> None:
        import pyarrow.dataset as ds

        dataset = ds.dataset(self.paths, format="parquet", filesystem=self.filesystem)
        self._schema = dataset.schema
        self._fragments = [rg for f in dataset.get_fragments() for rg in f.split_by_row_group()]

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            self._open()
        return self._schema  # type: ignore[return-value]

    @property
    def fragments(self) -> list:
        if self._fragments is None:
            self._open()
        return self._fragments  # type: ignore[return-value]

    @property
    def has_input_ids(self) -> bool:
        return "input_ids" in self.schema.names

    @property
    def use_input_ids(self) -> bool:
        return self.prefer_input_ids and self.has_input_ids

    def validate(self) -> None:
        """Fail at the door when required columns are missing."""
        names = self.schema.names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if "text" not in names and not self.use_input_ids:
            missing.append("text" if "input_ids" in names else "text (or input_ids)")
        if missing:
            raise DataQualityError(f"features lack columns {missing}; they have {names}")

    def read(self, fragment: int, columns: Sequence[str]) -> pa.Table:
        return self.fragments[fragment].to_table(columns=list(columns))

    def plan(self, split: str, shards: int) -> list[Unit]:
        """Units of ``split`` for ``shards`` readers; reads only the ``split`` column of each row group."""
        if split not in SPLITS:
            raise DataQualityError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        self.validate()
        n = len(self.fragments)
        parts = max(1, math.ceil(UNITS_PER_SHARD * shards / max(1, n)))
        units = []
        seen = set()
        for i in range(n):
            col = self.read(i, ["split"])
            seen.update(v for v in pc.unique(col["split"]).to_pylist() if v is not None)
            for p in range(parts):
                units.append(Unit(fragment=i, part=p, parts=parts, rows=int(len(_split_mask(col, p, parts, split)))))
        unknown = seen - set(SPLITS)
        if unknown:
            raise DataQualityError(f"unknown split values {sorted(map(str, unknown))}; expected {list(SPLITS)}")
        return units

    def read_split(self, split: str, columns: Sequence[str] = ("text", "label")) -> dict[str, list]:
        """All rows of one split as columns (for the TF-IDF baseline, which needs the corpus at once)."""
        out: dict[str, list] = {c: [] for c in columns}
        for i in range(len(self.fragments)):
            table = self.read(i, [*columns, "split"])
            table = table.filter(pc.fill_null(pc.equal(table["split"], split), False))
            for c in columns:
                out[c] += table[c].to_pylist()
        return out


def local_skip(batches: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` of ``workers`` produced when its rank consumed ``batches`` (round-robin)."""
    return max(0, (batches - worker + workers - 1) // workers)


class LengthBucketedStream(torch.utils.data.IterableDataset):
    """Padded, length-bucketed batches of one split for one rank (see the module docstring)."""

    def __init__(self, source: FeatureSource, units: Sequence[Unit], *, tokenizer, max_length: int,
                 truncation_side: str, batch_size: int, bucket_batches: int = 32, pad_to_multiple_of: int = 8,
                 seed: int = 0, rank: int = 0, world: int = 1, split: str = "train", shuffle: bool = True,
                 epochs: int | None = None, start_batch: int = 0, num_labels: int | None = None):
        """
        Args:
            source, units: the files and their plan for ``split`` (``FeatureSource.plan``).
            tokenizer: the model's fast tokenizer (pad id, vocabulary size, on-the-fly tokenizing).
            max_length, truncation_side: the profile's token budget and which end of a text to cut.
            batch_size: rows per batch; bucket_batches: batches per length-sorted buffer.
            pad_to_multiple_of: batch width granularity.
            seed, shuffle: data order (shuffle off: units and rows in plan order, batches by length).
            rank, world: this process's slice of the shards.
            epochs: passes over the data (None: endless, the training stream).
            start_batch: batches this rank already consumed (resume).
            num_labels: labels must be ids in ``0 .. num_labels-1`` (None: not checked).
        """
        super().__init__()
        self.source, self.units = source, list(units)
        self.tokenizer = tokenizer
        self.max_length, self.truncation_side = max_length, truncation_side
        self.batch_size, self.bucket_batches, self.multiple = batch_size, bucket_batches, pad_to_multiple_of
        self.seed, self.rank, self.world, self.split = seed, rank, world, split
        self.shuffle, self.epochs, self.start_batch = shuffle, epochs, start_batch
        self.num_labels = num_labels
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab_size = len(tokenizer)
        self.use_ids = source.use_input_ids
        self.columns = ["input_ids" if self.use_ids else "text", "label", "split"]
        if sum(u.rows for u in self.units) == 0:
            raise DataQualityError(f"no {split} rows in the features partition")

    # -- arithmetic over the plan (no reading) ----------------------------------------------------
    @property
    def buffer_rows(self) -> int:
        return self.batch_size * self.bucket_batches

    def epoch_units(self, epoch: int, shard: int, shards: int) -> list[Unit]:
        order = _rng(self.seed, epoch).permutation(len(self.units)) if self.shuffle else np.arange(len(self.units))
        return [self.units[i] for i in order[shard::shards]]

    def batches_in(self, rows: int) -> int:
        full, rest = divmod(rows, self.buffer_rows)
        return full * self.bucket_batches + math.ceil(rest / self.batch_size)

    # -- the stream ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # a new DataLoader asks worker 0 first, but batch `start_batch` of the uninterrupted stream came
        # from worker start_batch % workers: rotate the roles so the resumed order continues exactly
        worker = (worker + self.start_batch) % workers
        shard, shards = self.rank * workers + worker, self.world * workers
        skip = local_skip(self.start_batch, worker, workers)
        cache: dict[int, pa.Table] = {}
        epoch, empty = 0, 0
        while self.epochs is None or epoch < self.epochs:
            units = self.epoch_units(epoch, shard, shards)
            rows = sum(u.rows for u in units)
            if rows == 0:
                empty += 1
                if self.epochs is None and empty > 1000:  # a shard that never gets rows would hang training
                    raise DataQualityError(f"shard {shard}/{shards} gets no {self.split} rows: fewer rows than shards?")
                epoch += 1
                continue
            n = self.batches_in(rows)
            if skip >= n:  # a whole epoch already consumed: skip it without reading
                skip -= n
                epoch += 1
                continue
            first_buffer, first_batch = divmod(skip, self.bucket_batches)
            skip = 0
            for b, (items, labels) in enumerate(self._buffers(units, epoch, first_buffer * self.buffer_rows, cache),
                                                start=first_buffer):
                batches = self._bucket(items, labels, epoch, shard, b)
                yield from batches[first_batch:]
                first_batch = 0
            epoch += 1

    def _unit_rows(self, unit: Unit, epoch: int, cache: dict[int, pa.Table]) -> tuple[list, list[int]]:
        table = cache.get(unit.fragment)
        if table is None:
            cache.clear()  # keep one row group: the strides of a small partition share it
            table = cache[unit.fragment] = self.source.read(unit.fragment, self.columns)
        idx = _split_mask(table, unit.part, unit.parts, self.split)
        if len(idx) != unit.rows:
            raise DataQualityError(f"row group {unit.fragment} changed under the run: planned {unit.rows} "
                                   f"{self.split} rows, read {len(idx)}")
        if self.shuffle:
            idx = idx[_rng(self.seed, epoch, 7919, unit.fragment, unit.part).permutation(len(idx))]
        taken = table.take(pa.array(idx, type=pa.int64()))
        labels = taken["label"].to_pylist()
        bad = sorted({y for y in labels if y is None or y < 0 or (self.num_labels is not None and y >= self.num_labels)},
                     key=str)
        if bad:
            raise DataQualityError(f"labels {bad} in the {self.split} rows are not ids in 0..{(self.num_labels or 0) - 1}")
        return taken[self.columns[0]].to_pylist(), [int(y) for y in labels]

    def _buffers(self, units: list[Unit], epoch: int, start_row: int, cache) -> Iterator[tuple[list, list[int]]]:
        """Buffers of ``buffer_rows`` rows of this epoch's units, from row ``start_row`` on."""
        items: list = []
        labels: list[int] = []
        for unit in units:
            if start_row >= unit.rows:  # entirely before the resume point: not read
                start_row -= unit.rows
                continue
            u_items, u_labels = self._unit_rows(unit, epoch, cache)
            items += u_items[start_row:]
            labels += u_labels[start_row:]
            start_row = 0
            while len(items) >= self.buffer_rows:
                yield items[:self.buffer_rows], labels[:self.buffer_rows]
                items, labels = items[self.buffer_rows:], labels[self.buffer_rows:]
        if items:
            yield items, labels

    def _tokens(self, items: list) -> list[list[int]]:
        if self.use_ids:
            rows = [retruncate(r, self.max_length, self.truncation_side) for r in items]
        else:
            rows = self.tokenizer([str(t) for t in items], truncation=True, max_length=self.max_length)["input_ids"]
        return rows

    def _bucket(self, items: list, labels: list[int], epoch: int, shard: int, buffer: int) -> list[dict]:
        tokens = self._tokens(items)
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))  # stable: ties keep stream order
        batches = []
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            rows = [tokens[j] for j in idx]
            if any(not r for r in rows):
                raise DataQualityError("a features row has no tokens")
            top = max(max(r) for r in rows)
            if top >= self.vocab_size:
                raise DataQualityError(f"token id {top} >= vocabulary size {self.vocab_size}: the features were "
                                       "tokenized with another tokenizer than the model's")
            batches.append(pad_batch(rows, [labels[j] for j in idx], self.pad_id, self.multiple, self.max_length))
        if self.shuffle:
            perm = _rng(self.seed, epoch, shard, buffer).permutation(len(batches))
            batches = [batches[i] for i in perm]
        return batches


def _worker_init(_worker_id: int) -> None:
    # a worker must not outlive its trainer (kill -9 included); torch's own watchdog takes ~5 s
    from lakeforge.train.dist import die_with_parent

    die_with_parent()


def loader(stream: LengthBucketedStream, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over a batch stream (the stream batches; the loader only parallelises and prefetches)."""
    # its own generator: creating the iterator must not draw from the global RNG (dropout), or a
    # resumed run would see other dropout masks than the uninterrupted one
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       prefetch_factor=4 if num_workers else None, persistent_workers=False,
                                       worker_init_fn=_worker_init if num_workers else None,
                                       generator=torch.Generator().manual_seed(stream.seed))
