"""The classifier through the HF Auto classes, the optimizer groups, the LR schedule, CPU threads."""

from __future__ import annotations

import pytest
import torch

from lakeforge.config import TrainProfile
from lakeforge.train.loop import WarmupDecay, configure_optimizer
from lakeforge.train.model import MeanPooledBertForSequenceClassification


def tiny_classifier(seed: int = 0) -> MeanPooledBertForSequenceClassification:
    """A 2-layer, 32-wide random BERT under the mean-pooled head: builds in milliseconds, offline."""
    from lakeforge.train.model import MeanPooledBertConfig

    torch.manual_seed(seed)
    config = MeanPooledBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32,
                                  id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    return MeanPooledBertForSequenceClassification(config)


BATCH = {"input_ids": torch.tensor([[2, 5, 9, 3, 0, 0], [2, 7, 7, 8, 11, 3]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}


def test_classifier_round_trips_through_the_auto_classes(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_classifier().eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is MeanPooledBertForSequenceClassification
    with torch.inference_mode():
        assert torch.equal(model(**BATCH).logits, loaded(**BATCH).logits)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    out = loaded(**BATCH, labels=torch.tensor([0, 1]))  # the HF contract: labels in, loss out (Trainer relies on it)
    assert out.loss is not None and out.loss.ndim == 0


def test_versions_saved_before_the_auto_class_model_still_load(tmp_path):
    """The earlier layout: a bare BertModel dir + classifier_head.safetensors (champions registered by it)."""
    from safetensors.torch import save_file

    from lakeforge.train.model import LEGACY_HEAD_FILE, load_classifier

    model = tiny_classifier().eval()
    model.bert.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.classifier.state_dict().items()}, tmp_path / LEGACY_HEAD_FILE)
    loaded = load_classifier(tmp_path).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(**BATCH).logits, loaded(**BATCH).logits)


def test_mean_pooling_ignores_padding():
    model = tiny_classifier().eval()
    ids = torch.tensor([[2, 5, 9, 3]])
    padded = torch.tensor([[2, 5, 9, 3, 0, 0, 0]])
    with torch.inference_mode():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).logits
    torch.testing.assert_close(short, long)


def test_head_learns_faster_than_encoder_and_no_decay_on_norms():
    model = tiny_classifier()
    groups = configure_optimizer(model, TrainProfile(lr=1e-4, weight_decay=0.01, head_lr_scale=20.0)).param_groups
    head = [g for g in groups if g["lr_scale"] == 20.0]
    assert [p for g in head for p in g["params"]] == [model.classifier.weight, model.classifier.bias]
    assert all(g["lr"] == pytest.approx(2e-3) for g in head)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each parameter once
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].dim() < 2)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_warms_up_then_decays(schedule):
    f = WarmupDecay(2, 10, schedule)
    lrs = [f(k) for k in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and 0 < lrs[-1] < 0.2


def test_cpu_threads_leave_a_core_to_the_services(monkeypatch):
    from lakeforge.train import dist

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 2)
    assert dist.cpu_threads_default() == 1
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dist.cpu_threads_default() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert dist.cpu_threads_default() is None  # torch already follows OMP_NUM_THREADS
