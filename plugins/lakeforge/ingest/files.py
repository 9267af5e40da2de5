"""Parquet files of a landing: rows of one layer and one Kafka topic-partition streamed into the lake.

Both the raw rows and the quarantined records are streamed as Parquet (zstd, row groups cut at
``row_group_rows`` rows or ``row_group_bytes`` value bytes, files at ``rows_per_file`` rows or
``file_bytes`` bytes, one file sequence per topic-partition, so the same offsets always make the
same bytes), encoded and uploaded by background threads while the main thread consumes. The files
go under the table's data location; the landing then commits them to the table in one Iceberg
commit (:meth:`lakeforge.lake.Lake.publish_files`).

Memory is bounded by the row-group and file sizes, not by the partition: one pending row group and
one open file per topic-partition and stream, and at most two row groups waiting for the writer.

* :class:`ParquetFileStream` — one layer's rows of one topic-partition, cut into row groups and files;
* :class:`BackgroundWriter` — the encoding thread and the upload thread behind every stream;
* :class:`BoundedExecutor` — a one-thread executor with a bounded backlog (each of those threads).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lakeforge.config import IngestSpec
from lakeforge.lake import Lake


@dataclass(frozen=True)
class FileEntry:
    """One Parquet file a stream wrote."""

    key: str  # key in the lake
    size: int  # bytes
    rows: int


class BoundedExecutor:
    """A one-thread executor with at most ``max_pending`` tasks waiting: submitting more waits for the
    oldest, and a failed task re-raises in the submitter at the next submit or at :meth:`drain`."""

    def __init__(self, name: str, max_pending: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending: deque = deque()
        self.max_pending = max_pending

    def submit(self, fn, *args) -> None:
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class BackgroundWriter:
    """Two threads beside the consuming one (pyarrow releases the GIL): one encodes and compresses
    row groups, the other uploads finished files, so compression goes on while the S3 server takes
    a file (uploading in the encoding thread left it waiting for the server about a third of the
    time). At most ``max_pending`` row groups and ``max_uploads`` files wait, which bounds memory;
    a failure re-raises in the main thread at the next submit or at :meth:`drain`."""

    def __init__(self, max_pending: int = 2, max_uploads: int = 2):
        self.encoding = BoundedExecutor("lakeforge-parquet", max_pending)
        self.uploads = BoundedExecutor("lakeforge-upload", max_uploads)

    def submit(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the encoding thread (from the main thread)."""
        self.encoding.submit(fn, *args)

    def upload(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the upload thread (from the encoding thread)."""
        self.uploads.submit(fn, *args)

    def drain(self) -> None:
        self.encoding.drain()
        self.uploads.drain()

    def shutdown(self) -> None:
        self.encoding.shutdown()
        self.uploads.shutdown()


class ParquetFileStream:
    """Rows of one layer and one topic-partition, streamed into Parquet files in the lake.

    A row group closes at ``row_group_rows`` rows or at the row that brings its value bytes to
    ``row_group_bytes``, whichever comes first; a file closes after the row group that brings it to
    ``rows_per_file`` rows or ``file_bytes`` bytes. The cuts depend on the rows alone, not on how
    they arrived, so a rerun over the same offsets writes the same bytes. Files are named
    ``part-<topic-partition>-<n>.parquet``.

    A file is encoded into memory and uploaded whole when it closes: the writer thread then runs C++
    only (Parquet, zstd and the S3 upload release the GIL).
    A Python file object as the Parquet sink made every page write wait for the GIL, which the
    consuming thread holds: the writer was 1.5x slower that way.

    ``tp`` is the Kafka topic-partition the rows come from (it names the files); ``plain`` names the
    high-cardinality columns, written without dictionary or statistics.
    """

    def __init__(self, lake: Lake, prefix: str, tp: int, schema: pa.Schema, spec: IngestSpec,
                 writer: BackgroundWriter, plain: set[str]):
        self.lake, self.prefix, self.tp, self.schema, self.writer = lake, prefix, tp, schema, writer
        self.row_group_rows = min(spec.row_group_rows, spec.rows_per_file)
        self.row_group_bytes = spec.row_group_bytes
        self.rows_per_file = spec.rows_per_file
        self.file_bytes = spec.file_bytes
        # high-cardinality columns (ids, texts, raw bytes): no dictionary attempt, no min/max statistics
        self.options = {"compression": "zstd",
                        "use_dictionary": [n for n in schema.names if n not in plain],
                        "write_statistics": [n for n in schema.names if n not in plain]}
        self.pending: list[pa.Table] = []
        self.pending_sizes: list[np.ndarray] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.files: list[FileEntry] = []
        self._buffer = None  # the open file, encoded into memory (writer thread)
        self._pq = None
        self._written = 0
        self.rows = 0

    def add(self, table: pa.Table, sizes: np.ndarray) -> None:
        """Append rows and their value sizes in bytes (what the row-group byte limit counts)."""
        if not table.num_rows:
            return
        self.pending.append(table)
        self.pending_sizes.append(sizes)
        self.pending_rows += table.num_rows
        self.pending_bytes += int(sizes.sum())
        self.rows += table.num_rows
        while n := self._cut():
            self._hand_off(n)

    def _cut(self) -> int:
        """Rows of the next complete row group, or 0 while it is not complete yet."""
        max_rows = self.row_group_rows
        if self.pending_rows < max_rows and self.pending_bytes < self.row_group_bytes:
            return 0
        cumulative = np.cumsum(np.concatenate(self.pending_sizes))
        by_bytes = int(np.searchsorted(cumulative, self.row_group_bytes)) + 1  # the row reaching the limit closes it
        return min(max_rows, by_bytes, self.pending_rows)

    def _hand_off(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        group, rest = table.slice(0, n), table.slice(n)
        sizes = np.concatenate(self.pending_sizes)[n:]
        self.pending = [rest] if rest.num_rows else []
        self.pending_sizes = [sizes] if len(sizes) else []
        self.pending_rows = rest.num_rows
        self.pending_bytes = int(sizes.sum())
        self.writer.submit(self._write, group)

    def close(self) -> None:
        """Hand off the remaining rows and the closing of the last file (call :meth:`BackgroundWriter.drain`)."""
        if self.pending_rows:
            self._hand_off(self.pending_rows)
        self.writer.submit(self._close_file)

    # -- on the writer thread -------------------------------------------------------------------
    def _write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._pq is None:
            self._buffer = pa.BufferOutputStream()
            self._pq = pq.ParquetWriter(self._buffer, self.schema, **self.options)
            self._written = 0
        # one chunk per column (on this thread: it copies), so the pages do not depend on how the rows arrived
        self._pq.write_table(table.combine_chunks(), row_group_size=table.num_rows)
        self._written += table.num_rows
        if self._written >= self.rows_per_file or self._buffer.tell() >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._pq is None:
            return
        self._pq.close()
        data = self._buffer.getvalue()
        key = f"{self.prefix}/part-{self.tp:05d}-{len(self.files):05d}.parquet"
        self.files.append(FileEntry(key=key, size=data.size, rows=self._written))
        self._pq = self._buffer = None
        self.writer.upload(self._upload, key, data)

    # -- on the upload thread -------------------------------------------------------------------
    def _upload(self, key: str, data: pa.Buffer) -> None:
        with self.lake.fs.open_output_stream(self.lake.arrow_path(key)) as out:
            out.write(data)

