"""Parquet streams: the same rows make the same files, however they arrive; a failed upload surfaces."""

from __future__ import annotations

import pytest


def _stream_files(tmp_path, chunks, name, byte_limit=1 << 20, mkdir=True):
    import pyarrow as pa
    from lakeforge.config import IngestSpec
    from lakeforge.ingest.files import BackgroundWriter, ParquetFileStream
    from tests.unit.conftest import make_local_lake

    lake = make_local_lake(tmp_path / name)
    if mkdir:
        (lake.root / "raw/x/dt=2026-11-23/run=r").mkdir(parents=True)  # S3 has no directories; a local disk does
    spec = IngestSpec(row_group_rows=7, rows_per_file=20, row_group_bytes=byte_limit)
    writer = BackgroundWriter()
    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    stream = ParquetFileStream(lake, "raw/x/dt=2026-11-23/run=r", 0, schema, spec, writer, {"id"})
    import numpy as np

    for lo, hi in chunks:
        stream.add(pa.table({"id": [f"i{k}" for k in range(lo, hi)], "n": list(range(lo, hi))}, schema=schema),
                   np.array([100 + k % 7 for k in range(lo, hi)]))
    stream.close()
    try:
        writer.drain()
    finally:
        writer.shutdown()
    return lake, stream.files


def digests(lake, files):
    """sha256 of each file's bytes as uploaded."""
    import hashlib

    return [hashlib.sha256(open(lake.arrow_path(f.key), "rb").read()).hexdigest() for f in files]


def test_a_failed_upload_fails_the_drain(tmp_path):
    # without the run directory the local disk refuses the file: the upload thread's error surfaces
    with pytest.raises(FileNotFoundError):
        _stream_files(tmp_path, [(0, 50)], "a", mkdir=False)


def test_file_stream_cuts_row_groups_and_files_at_fixed_points(tmp_path):
    import pyarrow.parquet as pq

    lake, a = _stream_files(tmp_path, [(0, 3), (3, 50)], "a")
    other, b = _stream_files(tmp_path, [(0, 13), (13, 14), (14, 41), (41, 50)], "b")
    assert [f.rows for f in a] == [21, 21, 8]  # a file closes after the row group reaching 20 rows
    assert digests(lake, a) == digests(other, b)  # same bytes whatever the arrival chunks
    first = pq.ParquetFile(lake.arrow_path(a[0].key))
    assert [first.metadata.row_group(i).num_rows for i in range(first.num_row_groups)] == [7, 7, 7]
    # the entries describe the files as uploaded
    assert [f.size for f in a] == [len(open(lake.arrow_path(f.key), "rb").read()) for f in a]
    assert [pq.ParquetFile(lake.arrow_path(f.key)).metadata.num_rows for f in a] == [f.rows for f in a]


def test_file_stream_closes_row_groups_at_the_byte_limit(tmp_path):
    import pyarrow.parquet as pq

    # rows are 100..106 bytes: 320 bytes close a group at its 4th row (100+101+102+103 >= 320; 104+105+106+100)
    lake, a = _stream_files(tmp_path, [(0, 2), (2, 11)], "a", byte_limit=320)
    other, b = _stream_files(tmp_path, [(0, 11)], "b", byte_limit=320)
    assert digests(lake, a) == digests(other, b)
    f = pq.ParquetFile(lake.arrow_path(a[0].key))
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [4, 4, 3]
