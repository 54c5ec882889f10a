"""The HF Trainer trains MusicXL: segments with memory inside each row, loss right under gradient accumulation."""

import math

import torch
from transformers import Trainer, TrainingArguments

from hf_music_xl import MusicXLConfig, MusicXLForCausalLM


class RandomRows(torch.utils.data.Dataset):
    def __init__(self, rows, length):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(9, 298, (rows, length), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[: i % 5] = -100  # uneven valid counts per row
        return {"input_ids": self.ids[i], "labels": labels}


def test_trainer_steps_with_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    config = MusicXLConfig.from_preset("tiny", segment_len=16, mem_len=16)  # rows of 48: three segments each
    model = MusicXLForCausalLM(config)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomRows(32, 48))
    assert trainer.model_accepts_loss_kwargs  # so the Trainer passes num_items_in_batch to forward
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4
    # near ln(299) = 5.70 for a fresh model: not multiplied by the 2 accumulation steps (which would give ~11.4)
    assert all(4.0 < loss < 7.0 for loss in losses), losses
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
