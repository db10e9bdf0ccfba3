"""The model's loss honours the Trainer's `num_items_in_batch`: accumulation equals one large batch."""

import copy

import torch
from transformers import Trainer, TrainingArguments

from smolite_hf import SmoliteForCausalLM

from .conftest import tiny_config


def make_examples():
    torch.manual_seed(1)
    examples = []
    for prompt_length in (2, 9, 5, 10):  # 10, 3, 7, 2 targets: unequal, so a mean of means would differ
        ids = torch.randint(5, 99, (12,))
        labels = ids.clone()
        labels[:prompt_length] = -100
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def train_one_step(model, tmp_path, batch_size, accumulation):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",  # the update is proportional to the gradient (Adam's first step would hide a scale error)
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=0,
        dataloader_drop_last=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=make_examples())
    result = trainer.train()
    return result.training_loss, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_batch_4_equals_batch_1_times_4_accumulation_steps(tmp_path):
    torch.manual_seed(0)
    base = SmoliteForCausalLM(tiny_config(hidden_dropout=0.0))
    initial = {name: p.detach().clone() for name, p in base.named_parameters()}

    big_loss, big_params = train_one_step(copy.deepcopy(base), tmp_path / "a", batch_size=4, accumulation=1)
    acc_loss, acc_params = train_one_step(copy.deepcopy(base), tmp_path / "b", batch_size=1, accumulation=4)

    # the full-batch token-level mean, computed directly
    batch = make_examples()
    with torch.no_grad():
        reference = base(torch.stack([e["input_ids"] for e in batch]), labels=torch.stack([e["labels"] for e in batch])).loss
    assert abs(big_loss - reference.item()) < 1e-5
    assert abs(acc_loss - reference.item()) < 1e-5
    for name, value in big_params.items():
        assert not torch.equal(value, initial[name]) or name.endswith("rotary_emb.inv_freq")
        torch.testing.assert_close(acc_params[name], value, atol=1e-6, rtol=1e-5, msg=name)
