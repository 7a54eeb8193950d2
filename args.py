"""Argument dataclasses and the one parser every chattune script uses.

A recipe YAML supplies values, command-line flags override them, and a key that is not a field of
these dataclasses (or of `TrainingArguments`) is an error that names it:

    python train.py recipes/customer_service/sft.yaml --learning_rate 1.0e-4
    python data_prep.py raw.jsonl more.jsonl --max_length 512 --show 2
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = str(REPO / "models" / "SmolLM2-135M-Instruct")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id or local folder. Default: the embedded SmolLM2-135M-Instruct, "
                          "converted from its GGUF on first use."},
    )
    attn_implementation: str = field(
        default="sdpa_varlen",
        metadata={"help": "Attention kernel: sdpa_varlen (attention.py: per example in padding-free rows, "
                          "sdpa otherwise), sdpa, eager, flash_attention_2, ..."})


@dataclass
class DataArguments:
    train_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Dialogue files (.jsonl or .json). data_prep.py also takes them as positional arguments."})
    validation_files: list[str] = field(
        default_factory=list, metadata={"help": "Held-out dialogue files for the validation split."})
    validation_split_size: float = field(
        default=0.0, metadata={"help": "Share of train_files held out as validation when no validation_files."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "A folder written by data_prep.py, used instead of train_files."})
    input_format: str = field(
        default="auto",
        metadata={"help": "Record shape: auto (detected per line), messages, sharegpt, context_response, "
                          "prompt_completion or alpaca."})
    field_map: list[str] = field(
        default_factory=list,
        metadata={"help": "Rename record keys before the shape is detected, as old=new pairs: q=prompt a=completion."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message for records that carry none."})
    train_on: str = field(
        default="all", metadata={"help": "Which assistant turns are trained: all or last."})
    max_length: int = field(
        default=1024, metadata={"help": "Token budget; oldest whole turns are dropped to fit."})
    skip_invalid: bool = field(
        default=False, metadata={"help": "Keep going past invalid lines; they are listed in rejects.jsonl."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch to a multiple of this (8 helps tensor cores)."})


    def field_mapping(self) -> dict[str, str]:
        """field_map as a dict; a pair without '=' is an error."""
        pairs = [pair.split("=", 1) for pair in self.field_map]
        if any(len(pair) != 2 or not all(pair) for pair in pairs):
            raise SystemExit(f"error: field_map takes old=new pairs, got {self.field_map}")
        return dict(pairs)


@dataclass
class PrepArguments:
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the dataset and report.json go. Default: data/prepared/<first file>."})
    show: int = field(default=0, metadata={"help": "Print this many examples with the trained tokens marked."})


@dataclass
class ChatTrainingArguments(TrainingArguments):
    """TrainingArguments plus the few knobs chattune adds (as TRL's SFTConfig does)."""

    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without a better eval_loss "
                                        "(needs load_best_model_at_end and matching eval/save strategies)."})

    padding_free: bool = field(
        default=True, metadata={"help": "Concatenate each batch into one row without padding, attention kept "
                                        "per example, LM head only at trained positions. False: pad the batch."})
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluation keeps only the loss (no logits are gathered)."})

    def __post_init__(self):
        # Without an accelerator, say so: TrainingArguments then accepts bf16 (as CPU autocast), and
        # several processes become a gloo process group instead of independent runs.
        if not _has_accelerator():
            self.use_cpu = True
        super().__post_init__()


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()


def _recipe_argv(path: str, parser: HfArgumentParser) -> list[str]:
    """Turn a recipe YAML into flags, so YAML values are typed exactly like command-line values."""
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(recipe, dict):
        raise SystemExit(f"{path}: a recipe must be a mapping of field names to values")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {', '.join(unknown)}: each key must be a field of "
                         f"{', '.join(t.__name__ for t in parser.dataclass_types)}")
    argv = []
    for key, value in recipe.items():
        if value is None or value == []:  # the field's default
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(_flag_value(v) for v in values)]
    return argv


def _flag_value(value) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_args(dataclass_types, argv: list[str] | None = None, positional: str | None = None):
    """Parse `[recipe.yaml] [positional ...] [--flag value ...]` into the given dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    recipe_argv = []
    if argv and argv[0].endswith((".yaml", ".yml")):
        recipe_argv = _recipe_argv(argv.pop(0), parser)
    leading = []
    while positional and argv and not argv[0].startswith("-"):
        leading.append(argv.pop(0))
    if leading:
        argv = [f"--{positional}", *leading, *argv]
    try:
        return parser.parse_args_into_dataclasses(args=recipe_argv + argv)
    except ValueError as error:  # HfArgumentParser reports unused flags this way
        raise SystemExit(f"error: {error}") from None


def non_default_fields(obj) -> dict:
    """The fields of a dataclass instance that differ from their defaults (for a resolved recipe)."""
    out = {}
    for f in fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        value = value.value if isinstance(value, Enum) else value
        default = f.default_factory() if callable(f.default_factory) else f.default
        if value != default and isinstance(value, (str, int, float, bool, list, type(None))):
            out[f.name] = value
    return out
