"""Fine-tune a causal language model on dialogues with Trainer; only the assistant's replies are trained.

    python train.py recipes/customer_service/sft.yaml
    python train.py recipes/customer_service/sft.yaml --learning_rate 1.0e-4 --output_dir outputs/try
    accelerate launch --config_file recipes/accelerate/ddp.yaml train.py recipes/chitchat/sft.yaml
    python train.py recipes/customer_service/sft.yaml --resume_from_checkpoint true   # latest checkpoint

The output folder holds the model (safetensors), tokenizer and chat template, a generation config that
stops at the end of the assistant turn, recipe.yaml (the resolved arguments), data_report.json,
trainer_state.json and the metrics files (all_results.json with eval_loss and base_eval_loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import torch
import yaml
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, Trainer

import attention  # noqa: F401  (registers the sdpa_varlen attention implementation)
from args import ChatTrainingArguments, DataArguments, ModelArguments, non_default_fields, parse_args
from data_prep import PaddingCollator, PaddingFreeCollator, load_tokenizer, prepare_dataset, turn_end_token_ids
from embedded_model import resolve_model_path


def load_splits(data_args: DataArguments, tokenizer, training_args) -> tuple[datasets.DatasetDict, dict]:
    """Train/validation splits from a data_prep.py folder, or prepared now by the same code."""
    if data_args.dataset_path:
        report_file = Path(data_args.dataset_path) / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        return datasets.load_from_disk(data_args.dataset_path), report
    with training_args.main_process_first(desc="preparing data"):
        dataset, report, _ = prepare_dataset(data_args, tokenizer, seed=training_args.seed)
    return dataset, report


def load_model(model_args: ModelArguments, tokenizer):
    """The model in float32 (mixed precision is Trainer's job), generating until the turn ends."""
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                                 dtype=torch.float32,
                                                 attn_implementation=model_args.attn_implementation)
    model.generation_config.eos_token_id = turn_end_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def collator_for(data_args: DataArguments, training_args: ChatTrainingArguments, tokenizer):
    if training_args.padding_free:
        return PaddingFreeCollator()
    return PaddingCollator(tokenizer.pad_token_id, data_args.pad_to_multiple_of)


def build_trainer(model_args, data_args, training_args, tokenizer, dataset) -> Trainer:
    callbacks = []
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(training_args.early_stopping_patience))
    return Trainer(model=load_model(model_args, tokenizer), args=training_args,
                   train_dataset=dataset["train"], eval_dataset=dataset.get("validation"),
                   data_collator=collator_for(data_args, training_args, tokenizer),
                   processing_class=tokenizer, callbacks=callbacks)


def _resume_value(value: str | None):
    return True if value in ("true", "True", "last") else value


def main(model_args: ModelArguments, data_args: DataArguments, training_args: ChatTrainingArguments) -> dict:
    """Prepare data, evaluate the base model, train, evaluate again and save; returns all metrics."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dataset, report = load_splits(data_args, tokenizer, training_args)
    has_eval = "validation" in dataset
    resume = _resume_value(training_args.resume_from_checkpoint)
    # The untrained model is evaluated inside train() (eval_on_start), after Trainer has wrapped the
    # model: an evaluate() call before train() leaves DDP ranks without gradient synchronisation.
    training_args.eval_on_start = has_eval and not resume
    trainer = build_trainer(model_args, data_args, training_args, tokenizer, dataset)
    output_dir = Path(training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    metrics = dict(train_result.metrics)
    if training_args.eval_on_start:
        metrics["base_eval_loss"] = next(e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e)
    trainer.save_metrics("train", metrics)
    if has_eval:
        eval_metrics = trainer.evaluate()
        trainer.save_metrics("trainer_eval", eval_metrics)  # eval_results.json is evaluate_model.py's
        metrics.update(eval_metrics)
    if trainer.is_world_process_zero():
        resolved = {**non_default_fields(model_args), **non_default_fields(data_args),
                    **non_default_fields(training_args)}
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (output_dir / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main(*parse_args((ModelArguments, DataArguments, ChatTrainingArguments)))
