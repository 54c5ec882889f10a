"""The Trainer of a MusicXL run: ``MusicXLTrainer`` (stream memory carried from step to step, the one-cycle
schedule, atomic checkpoints, training arguments as JSON) and ``build_trainer``, the one place a run, the quality
report and the benchmarks assemble it with its data, metrics and epoch seeding."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..data.pieces import collate
from ..hub.push import hub_training_arguments
from ..models.music_xl.cache_music_xl import MusicXLCache
from .callbacks import EpochSeed
from .checkpoints import STAGING_DIR, STREAM_MEMORY, publish_directory, write_training_args
from .metrics import compute_metrics, token_scores
from .precision import resolve_precision
from .settings import TrainSettings


class MusicXLTrainer(Trainer):
    """The Trainer with stream memory, a one-cycle learning-rate schedule, atomic checkpoints and the training
    arguments as JSON instead of a pickle (see the module docstring).

    With ``carry_memory`` (stream training, ``train_dataset`` a ``PieceStreams``), each training step continues the
    memory the step before ended with: one ``MusicXLCache`` per process, its rows the process's streams. It starts
    empty with every epoch (new streams) and is saved with each checkpoint, so a resumed run continues exactly.
    """

    def __init__(self, *args, warmup_fraction: float = 0.25, carry_memory: bool = False, **kwargs):
        self.warmup_fraction = warmup_fraction
        self.carry_memory = carry_memory
        self.memory, self.memory_epoch = None, None  # the streams' MusicXLCache and the epoch it belongs to
        self._staging_root = None  # set while a checkpoint is being written
        self._push_pending = False
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.carry_memory and model.training):  # evaluation scores each piece from its start
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        epoch = self.train_dataset.epoch
        if self.memory_epoch != epoch:  # a new epoch deals new streams: start them without memory
            self.memory, self.memory_epoch = None, epoch
        inputs = {**inputs, "past_key_values": self.memory, "use_cache": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.memory = outputs.past_key_values  # detached: no gradient reaches back into this step
        return (loss, outputs) if return_outputs else loss

    def save_stream_memory(self, folder) -> None:
        if self.memory is None:
            return
        from safetensors.torch import save_file

        tensors, first = self.memory.state()
        metadata = {"epoch": str(self.memory_epoch), "first": str(first)}
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.cpu() for k, v in tensors.items()},
            str(Path(folder) / STREAM_MEMORY.format(self.args.process_index)),
            metadata,
        )

    def load_stream_memory(self, folder) -> None:
        from safetensors import safe_open

        path = Path(folder) / STREAM_MEMORY.format(self.args.process_index)
        if not path.is_file():
            return
        with safe_open(str(path), framework="pt", device=str(self.args.device)) as memory_file:
            metadata = memory_file.metadata()
            tensors = {name: memory_file.get_tensor(name) for name in memory_file.keys()}
        config = self.accelerator.unwrap_model(self.model).config
        self.memory = MusicXLCache.from_state(config, tensors, int(metadata["first"]))
        self.memory_epoch = int(metadata["epoch"])

    def _load_rng_state(self, checkpoint) -> None:
        # the Trainer calls this once when it resumes, at the step it resumes from: the memory goes with the RNG
        super()._load_rng_state(checkpoint)
        if self.carry_memory and checkpoint is not None:
            self.load_stream_memory(checkpoint)

    def _get_output_dir(self, trial) -> str:
        # While saving, the Trainer writes (and rotates) checkpoints in the staging directory.
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's save into ``OUTPUT_DIR/_saving/checkpoint-N``, then one rename to ``OUTPUT_DIR/checkpoint-N``
        once every rank has written its files; then the old checkpoints are rotated and the Hub push (if any) runs."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging_root = os.path.join(run_dir, STAGING_DIR)
        try:
            super()._save_checkpoint(model, trial)
            if self.carry_memory:
                self.save_stream_memory(Path(self._staging_root) / name)
            self._point_best_past_staging(run_dir, Path(self._staging_root) / name)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank's rng_state_<rank>.pth (and memory) is in place
        target = os.path.join(run_dir, name)
        if self.args.should_save:
            publish_directory(Path(run_dir) / STAGING_DIR / name, Path(target))
            shutil.rmtree(Path(run_dir) / STAGING_DIR, ignore_errors=True)  # nothing else is in it
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
        if self._push_pending:
            self._push_pending = False
            self._push_from_checkpoint(target)

    def _point_best_past_staging(self, run_dir: str, staged: Path) -> None:
        """The Trainer records the best checkpoint (``--keep-best``) under the directory it saved in, here the
        staging one: name it where it will be once renamed, in memory and in the staged ``trainer_state.json``."""
        best = self.state.best_model_checkpoint
        if best is None or not best.startswith(self._staging_root):
            return
        self.state.best_model_checkpoint = os.path.join(run_dir, os.path.relpath(best, self._staging_root))
        if self.args.should_save:
            self.state.save_to_json(str(staged / "trainer_state.json"))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_root is not None:  # called inside the save: push once the checkpoint is in place
            self._push_pending = True
            return
        # The Trainer writes a pickled training_args.bin into OUTPUT_DIR before uploading it: give it a name the
        # upload skips ("_*") and delete it; training_args.json is uploaded instead.
        import transformers.trainer as trainer_module

        hidden, original = "_training_args.bin", trainer_module.TRAINING_ARGS_NAME
        write_training_args(self.args.output_dir, self.args)
        trainer_module.TRAINING_ARGS_NAME = hidden
        try:
            super()._push_from_checkpoint(checkpoint_folder)
        finally:
            trainer_module.TRAINING_ARGS_NAME = original
            Path(self.args.output_dir, hidden).unlink(missing_ok=True)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # the arguments as JSON, not the Trainer's pickle
            write_training_args(output_dir if output_dir is not None else self.args.output_dir, self.args)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and num_training_steps < 4:  # too short for a cycle: constant rate
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda step: 1.0)
        elif self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer or self.optimizer,
                max_lr=self.args.learning_rate,
                total_steps=num_training_steps,
                pct_start=max(self.warmup_fraction, 2 / num_training_steps),  # at least 1 step up (torch needs it)
                anneal_strategy="cos",
                div_factor=25.0,  # start at peak / 25
                final_div_factor=1e3,  # end at start / 1000
            )
        return self.lr_scheduler


def training_arguments(settings: TrainSettings, max_steps: int) -> TrainingArguments:
    return TrainingArguments(
        # streams: rows keep their order (each process its own streams; accelerate deals out whole batches)
        train_sampling_strategy="sequential" if settings.train_mode == "stream" else "random",
        activation_checkpointing=settings.gradient_checkpointing,
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=max_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        eval_strategy="steps" if settings.eval_steps > 0 else "epoch",
        eval_steps=settings.eval_steps if settings.eval_steps > 0 else None,
        save_strategy="steps" if settings.save_steps > 0 else "epoch",
        save_steps=settings.save_steps if settings.save_steps > 0 else 500,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=settings.keep_best,
        metric_for_best_model="eval_nll_per_note" if settings.keep_best else None,
        greater_is_better=False if settings.keep_best else None,
        logging_steps=settings.logging_steps,
        remove_unused_columns=False,  # the transform needs the raw columns
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU real DDP (gloo)
        seed=settings.seed,
        report_to="none",
        **resolve_precision(settings.precision),
        **(
            hub_training_arguments(settings.hub_model_id, settings.hub_strategy, settings.hub_private or None)
            if settings.hub_model_id
            else {}
        ),
    )


def build_trainer(
    settings: TrainSettings,
    model,
    args: TrainingArguments,
    train_data,
    train_set,
    eval_set=None,
    tokenizer=None,
    callbacks: list | None = None,
    data_collator=collate,
    carry_memory: bool | None = None,
) -> MusicXLTrainer:
    """The Trainer for ``model``: our collate, metrics and schedule, the epoch told to the data that draws the
    examples (``train_data``: ``PieceStreams`` or ``TrainTransform``), and the memory carried from step to step in
    stream training (``carry_memory`` None: whenever ``settings.train_mode`` is stream; False for a model without
    our memory, such as the quality report's GPT-2)."""
    return MusicXLTrainer(
        model=model,
        args=args,
        data_collator=data_collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=token_scores,
        callbacks=[EpochSeed(train_data), *(callbacks or [])],
        warmup_fraction=settings.warmup_fraction,
        carry_memory=settings.train_mode == "stream" if carry_memory is None else carry_memory,
    )
