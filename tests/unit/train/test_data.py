"""The features stream: sharding by rank and worker, exact skip on resume, length bucketing, tokens."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lakeforge.errors import DataQualityError
from lakeforge.train.data import FeatureSource, LengthBucketedStream, loader, local_skip, pad_batch, retruncate


class CharTokenizer:
    """A tiny stand-in for the fast tokenizer: one token per character, [CLS]=1 … [SEP]=2, pad 0."""

    pad_token_id = 0

    def __len__(self):
        return 300

    def __call__(self, texts, truncation=True, max_length=512):
        out = []
        for t in texts:
            ids = [1, *[3 + (ord(c) % 290) for c in t], 2]
            out.append(retruncate(ids, max_length, "left") if truncation else ids)
        return {"input_ids": out}


def write_features(tmp_path, n: int = 120, files: int = 3, row_group_size: int = 10, ids: bool = False):
    """``n`` rows (id i, a unique text of ~5 + i % 40 chars, label i % 2, split by i % 10) in ``files`` files."""
    rows = [{"id": str(i), "text": f"{i}:" + "x" * (5 + i % 40), "label": i % 2,
             "split": "test" if i % 10 == 0 else "validation" if i % 10 == 1 else "train"} for i in range(n)]
    table = pa.Table.from_pylist(rows)
    if ids:
        tok = CharTokenizer()
        table = table.drop_columns(["text"]).append_column(
            "input_ids", pa.array(tok([r["text"] for r in rows], max_length=512)["input_ids"], type=pa.list_(pa.int32())))
    per = -(-n // files)
    paths = []
    for f in range(files):
        path = tmp_path / f"part-{f}.parquet"
        pq.write_table(table.slice(f * per, per), path, row_group_size=row_group_size)
        paths.append(str(path))
    return FeatureSource(paths)


def stream(source, split="train", world=1, rank=0, **kw):
    units = source.plan(split, world * max(1, kw.pop("workers", 1)))
    args = dict(tokenizer=CharTokenizer(), max_length=kw.pop("max_length", 64), truncation_side="left",
                batch_size=kw.pop("batch_size", 4), bucket_batches=kw.pop("bucket_batches", 3), seed=7,
                rank=rank, world=world, split=split, num_labels=2)
    return LengthBucketedStream(source, units, **{**args, **kw})


def take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


def row_keys(batch):
    """Rows of a batch as hashable keys (ids without padding, label)."""
    return [(tuple(r[m.bool()].tolist()), int(y)) for r, m, y in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])]


def test_one_epoch_covers_every_train_row_once_across_ranks(tmp_path):
    source = write_features(tmp_path)
    rows = []
    for rank in (0, 1):
        for b in stream(source, world=2, rank=rank, epochs=1):
            rows += row_keys(b)
    one = [k for b in stream(source, world=1, epochs=1) for k in row_keys(b)]
    assert len(one) == len(set(one)) == sum(1 for i in range(120) if i % 10 >= 2)
    assert sorted(rows) == sorted(one)  # no row twice, none missing, and the ranks share no row


def test_workers_split_a_rank_shard_and_the_loader_interleaves_them(tmp_path):
    source = write_features(tmp_path)
    s = stream(source, workers=2, epochs=1)
    rows = [k for b in loader(s, num_workers=2, pin_memory=False) for k in row_keys(b)]
    one = [k for b in stream(source, epochs=1) for k in row_keys(b)]
    assert sorted(rows) == sorted(one) and len(set(rows)) == len(rows)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("skip", [0, 1, 5, 17, 40])  # 17 and 40 cross epoch boundaries (~24 batches an epoch)
def test_resumed_stream_yields_exactly_what_the_uninterrupted_one_yields_next(tmp_path, workers, skip):
    source = write_features(tmp_path)
    whole = take(loader(stream(source, workers=max(1, workers)), workers, False), skip + 12)
    resumed = take(loader(stream(source, workers=max(1, workers), start_batch=skip), workers, False), 12)
    for a, b in zip(whole[skip:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_local_skip_follows_the_round_robin():
    # a rank consumed 5 batches from 2 workers: 0,2,4 from worker 0 and 1,3 from worker 1
    assert [local_skip(5, w, 2) for w in (0, 1)] == [3, 2]
    assert [local_skip(0, w, 3) for w in range(3)] == [0, 0, 0]


def test_epochs_reorder_the_data(tmp_path):
    source = write_features(tmp_path)
    s = stream(source)
    per_epoch = s.batches_in(sum(u.rows for u in s.units))
    batches = take(s, 2 * per_epoch)
    first = [k for b in batches[:per_epoch] for k in row_keys(b)]
    second = [k for b in batches[per_epoch:] for k in row_keys(b)]
    assert sorted(first) == sorted(second) and first != second


def test_length_bucketing_pads_less_than_random_batches(tmp_path):
    source = write_features(tmp_path, n=400, files=1, row_group_size=400)
    batches = list(stream(source, epochs=1, batch_size=8, bucket_batches=8, pad_to_multiple_of=1))
    padded = sum(b["attention_mask"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    lengths = [len(k[0]) for b in batches for k in row_keys(b)]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    random_padded = sum(8 * max(lengths[j] for j in perm[i:i + 8]) for i in range(0, len(perm), 8))
    assert padded < 0.8 * random_padded  # measured ~0.55: each buffer of 64 rows sorted by length
    assert real == sum(lengths)


def test_batches_pad_to_a_multiple_but_not_past_max_length():
    b = pad_batch([[1, 5, 2], [1, 5, 6, 7, 2]], [0, 1], pad_id=0, multiple=8, max_length=6)
    assert b["input_ids"].shape == (2, 6) and b["attention_mask"].sum().item() == 8
    b = pad_batch([[1, 5, 2]], [1], pad_id=0, multiple=8, max_length=64)
    assert b["input_ids"].shape == (1, 8) and b["input_ids"][0, 3:].eq(0).all()


def test_input_ids_column_is_used_and_cut_on_the_profile_side(tmp_path):
    source = write_features(tmp_path, ids=True)
    assert source.has_input_ids
    batches = list(stream(source, epochs=1, max_length=16))
    for b in batches:
        for ids, _ in row_keys(b):
            assert len(ids) <= 16 and ids[0] == 1 and ids[-1] == 2  # [CLS] … [SEP] survive the cut


def test_retruncate_keeps_special_tokens_and_the_chosen_end():
    ids = [101, 1, 2, 3, 4, 5, 102]
    assert retruncate(ids, 5, "left") == [101, 3, 4, 5, 102]
    assert retruncate(ids, 5, "right") == [101, 1, 2, 3, 102]
    assert retruncate(ids, 10, "left") == ids


def test_evaluation_stream_is_in_plan_order_and_complete(tmp_path):
    source = write_features(tmp_path)
    a = [k for b in stream(source, split="test", shuffle=False, epochs=1) for k in row_keys(b)]
    b = [k for b in stream(source, split="test", shuffle=False, epochs=1) for k in row_keys(b)]
    assert a == b and len(a) == 12


def test_plan_reads_only_the_split_column(tmp_path, monkeypatch):
    source = write_features(tmp_path)
    seen = []
    real = FeatureSource.read
    monkeypatch.setattr(FeatureSource, "read", lambda self, i, cols: seen.append(tuple(cols)) or real(self, i, cols))
    units = source.plan("train", 2)
    assert set(seen) == {("split",)} and sum(u.rows for u in units) == 96


@pytest.mark.parametrize("bad,match", [
    ({"split": "holdout"}, "holdout"),
    ({"label": 7}, "labels"),
])
def test_bad_rows_are_rejected_with_the_value(tmp_path, bad, match):
    rows = [{"id": "1", "text": "fine text", "label": 1, "split": "train"}, {"id": "2", "text": "x", "label": 0,
                                                                            "split": "train", **bad}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    with pytest.raises(DataQualityError, match=match):
        list(stream(FeatureSource([str(tmp_path / "f.parquet")]), epochs=1))


def test_tokens_from_another_vocabulary_are_rejected(tmp_path):
    table = pa.table({"id": ["1"], "input_ids": pa.array([[1, 999, 2]], type=pa.list_(pa.int32())),
                      "label": [1], "split": ["train"]})
    pq.write_table(table, tmp_path / "f.parquet")
    with pytest.raises(DataQualityError, match="another tokenizer"):
        list(stream(FeatureSource([str(tmp_path / "f.parquet")]), epochs=1))


def test_missing_columns_fail_at_the_door(tmp_path):
    pq.write_table(pa.table({"id": ["1"], "label": [1], "split": ["train"]}), tmp_path / "f.parquet")
    with pytest.raises(DataQualityError, match="text"):
        FeatureSource([str(tmp_path / "f.parquet")]).plan("train", 1)


@pytest.mark.parametrize("stats,profile,use", [
    (None, (128, "left"), True),  # tokenization unrecorded: trust the column
    ({"max_length": 128, "truncation_side": "left", "truncated_share": 0.4}, (128, "left"), True),
    ({"max_length": 512, "truncation_side": "left", "truncated_share": 0.1}, (128, "left"), True),  # cut again
    ({"max_length": 128, "truncation_side": "left", "truncated_share": 0.4}, (512, "left"), False),  # gpu wants more
    ({"max_length": 128, "truncation_side": "left", "truncated_share": 0.0}, (512, "left"), True),  # nothing was cut
    ({"max_length": 512, "truncation_side": "right", "truncated_share": 0.2}, (128, "left"), False),  # other end kept
])
def test_stored_tokens_are_used_only_when_they_hold_what_the_profile_wants(stats, profile, use):
    from lakeforge.train.data import choose_token_source

    assert choose_token_source(True, stats, *profile)[0] is use
    assert choose_token_source(False, stats, *profile)[0] is False


def test_text_is_tokenized_when_the_stored_ids_are_too_short(tmp_path):
    rows = [{"id": "1", "text": "y" * 30, "label": 1, "split": "train",
             "input_ids": [1, 5, 2]}]  # ids cut short; the text is longer
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    source = FeatureSource([str(tmp_path / "f.parquet")], prefer_input_ids=False)
    (batch,) = list(stream(source, epochs=1))
    assert int(batch["attention_mask"].sum()) == 32  # [CLS] + 30 characters + [SEP], from the text
