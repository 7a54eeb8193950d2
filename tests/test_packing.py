"""Padding-free batches: literal tensors out, and packed examples never see each other."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import attention
from data_prep import PaddingFreeCollator

M = -100
EXAMPLES = [{"input_ids": [1, 5, 6, 7, 2], "labels": [M, M, 6, 7, 2]},
            {"input_ids": [1, 8, 9, 2], "labels": [M, M, 9, 2]},
            {"input_ids": [1, 4, 3, 3, 5, 2], "labels": [M, M, M, M, 5, 2]}]


def test_collator_concatenates_restarts_positions_and_keeps_trained_positions():
    batch = PaddingFreeCollator()(EXAMPLES[:2])
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6, 7, 2, 1, 8, 9, 2]]))
    assert torch.equal(batch["position_ids"], torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]]))
    assert torch.equal(batch["labels"], torch.tensor([[M, M, 6, 7, 2, M, M, 9, 2]]))
    # Position i predicts token i + 1: positions 1, 2, 3 predict 6, 7, 2 and 6, 7 predict 9, 2.
    assert torch.equal(batch["logits_to_keep"], torch.tensor([1, 2, 3, 6, 7]))
    assert torch.equal(batch["shift_labels"], torch.tensor([[6, 7, 2, 9, 2]]))
    assert "attention_mask" not in batch


def test_first_label_of_an_example_is_never_predicted_across_the_boundary():
    batch = PaddingFreeCollator()([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8], "labels": [7, 8]}])
    assert torch.equal(batch["labels"], torch.tensor([[M, 6, M, 8]]))
    assert torch.equal(batch["shift_labels"], torch.tensor([[6, 8]]))


def loss_and_grads(model, batch, num_items):
    model.zero_grad()
    loss = model(**batch, num_items_in_batch=num_items).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", "sdpa_varlen"])
def test_packed_loss_and_gradients_equal_one_by_one(tiny_model_dir, attn_implementation):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn_implementation,
                                                 dtype=torch.float32)
    model.config.use_cache = False
    collate = PaddingFreeCollator()
    total = sum(sum(label != M for label in e["labels"][1:]) for e in EXAMPLES)
    packed_loss, packed_grads = loss_and_grads(model, collate(EXAMPLES), total)
    single_loss, single_grads = 0.0, {}
    for example in EXAMPLES:
        loss, grads = loss_and_grads(model, collate([example]), total)
        single_loss += loss
        single_grads = {n: single_grads.get(n, 0) + g for n, g in grads.items()}
    assert packed_loss == pytest.approx(float(single_loss), rel=1e-5)
    assert packed_grads.keys() == single_grads.keys()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, single_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # The same check catches leakage: positions that run on across examples give another loss.
    leaky = collate(EXAMPLES)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    assert loss_and_grads(model, leaky, total)[0] != pytest.approx(float(single_loss), rel=1e-3)


def test_sdpa_varlen_splits_the_row_and_never_falls_back_on_packed_rows(tiny_model_dir):
    from unittest import mock

    assert attention.example_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [0, 3, 5, 6]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa_varlen")
    model.config.use_cache = False
    with mock.patch.object(attention, "sdpa_attention_forward", side_effect=AssertionError("fell back")):
        assert torch.isfinite(model(**PaddingFreeCollator()(EXAMPLES)).loss)
