"""TRL's SFTTrainer trains Smolite on messages data with assistant-only loss through our chat template."""

import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ROWS = [
    {"messages": [{"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "네 반가워요"}]},
    {"messages": [{"role": "user", "content": "오늘 날씨 어때?"}, {"role": "assistant", "content": "맑아요"}]},
] * 4


def test_sft_trainer_with_assistant_only_loss(converted_dir):
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    model = AutoModelForCausalLM.from_pretrained(converted_dir)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=4, per_device_train_batch_size=4, assistant_only_loss=True,
                         report_to="none", use_cpu=True, logging_steps=1, learning_rate=1e-3, max_length=100,
                         disable_tqdm=True, seed=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            prompt_length = next(i for i, label in enumerate(labels) if label != -100)
            assert ids[prompt_length - 1] == tokenizer.sep_token_id  # the prompt (up to <sep>) is masked
            trained = [label for label in labels[prompt_length:] if label != -100]
            assert trained == [t for t in ids[prompt_length:] if t != tokenizer.pad_token_id]  # the whole reply
            assert tokenizer.eos_token_id in labels  # the reply's <end> is trained
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
