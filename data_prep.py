"""Turn dialogue files into a tokenized dataset in which only the assistant's words are trained.

    python data_prep.py raw.jsonl                      # embedded SmolLM2 tokenizer -> data/prepared/raw
    python data_prep.py a.jsonl b.json --validation_split_size 0.1 --max_length 512 --show 2
    python data_prep.py raw.jsonl --skip_invalid --output_dir data/prepared/mine

Writes a DatasetDict (`train`, and `validation` when asked) with integer columns input_ids and labels
(save_to_disk), report.json with every count, and rejects.jsonl with --skip_invalid. Record shapes are
listed in conversations.py. The collator used for training is here too: it only pads.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from args import DataArguments, ModelArguments, PrepArguments, REPO, parse_args
from conversations import read_conversations

IGNORE_INDEX = -100
# For tokenizers that ship no chat template (GPT-2 and other base models). Headers end in a newline so
# that a turn's first token never merges with its header; newlines after a tag must be written as
# expressions, since transformers renders templates with trim_blocks.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)
ROW_FEATURES = datasets.Features({
    "source": datasets.Value("string"),
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string"),
                               "weight": datasets.Value("int8")}),
    "error": datasets.Value("string"),
})


class TemplateMismatch(ValueError):
    """The chat template renders a prefix that is not an exact token prefix of the conversation."""


def load_tokenizer(model_name_or_path: str):
    """The model's tokenizer with a chat template and a pad token (the fallback template if it has none)."""
    from transformers import AutoTokenizer

    from embedded_model import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path))
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise ValueError(f"{model_name_or_path}: the tokenizer has no eos_token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # safe: padding is masked by position, not by id
    return tokenizer


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as it is shown to the model in training, evaluation and chat."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered conversation and, per assistant message, (message index, reply start, turn end) in chars.

    A reply starts where the prompt rendered with add_generation_prompt ends, and the turn ends where the
    conversation rendered up to that message ends; both must be exact prefixes of the whole rendering.
    """
    text = render(tokenizer, messages)
    return text, _spans_from_pieces(tokenizer, messages, text) or _spans_from_prefixes(tokenizer, messages, text)


def _spans_from_prefixes(tokenizer, messages, text: str) -> list[tuple[int, int, int]]:
    """Render every prefix: exact for any template, but quadratic in the number of turns."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render(tokenizer, messages[: i + 1])
        if not (turn.startswith(prompt) and text.startswith(turn)):
            raise TemplateMismatch(f"message {i + 1}: the chat template does not render the conversation "
                                   "prefix as a prefix of the whole conversation")
        spans.append((i, len(prompt), len(turn)))
    return spans


def _spans_from_pieces(tokenizer, messages, text: str) -> list[tuple[int, int, int]] | None:
    """The same spans in linear time, or None when the template is not a plain concatenation of turns.

    Each message's piece is what it adds after its predecessor (two-message renders); the pieces must
    join into the whole rendering exactly, each reply's piece must open with the generation prompt, and
    the last reply's prompt is checked against a real prefix render. Anything else falls back.
    """
    try:
        pieces = [render(tokenizer, messages[:1])]
        for k in range(1, len(messages)):
            before, both = render(tokenizer, messages[k - 1:k]), render(tokenizer, messages[k - 1:k + 1])
            if not both.startswith(before):
                return None
            pieces.append(both[len(before):])
        generation_prompt = render(tokenizer, messages[:1], add_generation_prompt=True)[len(pieces[0]):]
    except Exception:  # a template may reject a window (role-alternation checks): use the exact path
        return None
    if "".join(pieces) != text:
        return None
    spans, end = [], 0
    for i, piece in enumerate(pieces):
        start, end = end, end + len(piece)
        if messages[i]["role"] == "assistant":
            if not piece.startswith(generation_prompt):
                return None
            spans.append((i, start + len(generation_prompt), end))
    last, reply_start, _ = spans[-1]
    if render(tokenizer, messages[:last], add_generation_prompt=True) != text[:reply_start]:
        return None
    return spans


def encode(tokenizer, messages, train_on: str = "all") -> dict:
    """input_ids, labels (-100 off the trained replies) and the token index where each assistant turn ends."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoding["input_ids"]
    token_at = _token_index_by_char(encoding["offset_mapping"], len(input_ids))
    closing = set(tokenizer.all_special_ids)
    last = spans[-1][0]
    labels = [IGNORE_INDEX] * len(input_ids)
    turn_ends = []
    for index, start, end in spans:
        if start not in token_at or end not in token_at:
            raise TemplateMismatch(f"message {index + 1}: the reply's first or last token merges with the "
                                   "template around it, so the prompt is not an exact token prefix")
        first, stop = token_at[start], token_at[end]
        turn_ends.append(stop)
        if messages[index]["weight"] and (train_on == "all" or index == last):
            stop = _after_last_closing_token(input_ids, first, stop, closing)
            labels[first:stop] = input_ids[first:stop]
    return {"input_ids": input_ids, "labels": labels, "turn_ends": turn_ends}


def turn_end_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the eos and the last trained token of a rendered reply."""
    probe = [{"role": "user", "content": "Hi", "weight": 0}, {"role": "assistant", "content": "Hello", "weight": 1}]
    trained = [label for label in encode(tokenizer, probe)["labels"] if label != IGNORE_INDEX]
    closing = trained[-1] if trained[-1] in tokenizer.all_special_ids else tokenizer.eos_token_id
    return sorted({tokenizer.eos_token_id, closing})


def _token_index_by_char(offsets, count: int) -> dict[int, int]:
    index = {}
    for i, (start, _) in enumerate(offsets):
        index.setdefault(start, i)  # one character can become several byte tokens; keep the first
    index[offsets[-1][1] if offsets else 0] = count
    return index


def _after_last_closing_token(input_ids, first: int, stop: int, closing: set[int]) -> int:
    """Train the reply up to and including the token that closes the turn; what follows it is template."""
    for i in range(stop - 1, first - 1, -1):
        if input_ids[i] in closing:
            return i + 1
    return stop


def encode_within(tokenizer, messages, train_on: str, max_length: int) -> tuple[dict | None, str | None, int]:
    """Encode, dropping whole oldest exchanges (keeping a system message) until it fits max_length.

    Returns (encoded or None, reason it was dropped or truncated, number of exchanges dropped).
    """
    encoded = encode(tokenizer, messages, train_on)
    if len(encoded["input_ids"]) <= max_length:
        return encoded, None, 0
    exchanges = sum(m["role"] == "user" for m in messages)
    # Turn ends give each later exchange's start, so skip straight to the first that could fit.
    excess = len(encoded["input_ids"]) - max_length
    dropped = next((k for k, end in enumerate(encoded["turn_ends"], start=1) if end >= excess), exchanges)
    for dropped in range(max(dropped, 1), exchanges):
        encoded = encode(tokenizer, drop_oldest_exchanges(messages, dropped), train_on)
        if len(encoded["input_ids"]) <= max_length:
            return encoded, "dropped_oldest_turns", dropped
    return None, "final_turn_too_long", exchanges - 1


def drop_oldest_exchanges(messages, count: int) -> list:
    """The conversation without its `count` oldest user turns and their replies; a system message stays."""
    system = list(messages[:1]) if messages and messages[0]["role"] == "system" else []
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    return system + list(messages[users[count]:]) if count < len(users) else system


def example_outcome(tokenizer, messages, error: str | None, train_on: str, max_length: int) -> dict:
    """One record's tokens and what happened to it: invalid, dropped (with the reason) or kept, truncated or not."""
    encoded, reason, turns_dropped = None, None, 0
    if error is None:
        try:
            encoded, reason, turns_dropped = encode_within(tokenizer, messages, train_on, max_length)
        except TemplateMismatch as mismatch:
            error = str(mismatch)
    supervised = sum(label != IGNORE_INDEX for label in encoded["labels"]) if encoded else 0
    if error:
        dropped = "invalid"
    elif encoded is None:
        dropped = reason
    else:
        dropped = None if supervised else "no_trained_tokens"
    kept = dropped is None
    return {"input_ids": encoded["input_ids"] if kept else [], "labels": encoded["labels"] if kept else [],
            "error": error, "dropped": dropped, "truncated": reason if kept else None,
            "turns_dropped": turns_dropped if kept else 0, "length": len(encoded["input_ids"]) if kept else 0,
            "supervised": supervised if kept else 0}


def _tokenize_rows(batch: dict, tokenizer, train_on: str, max_length: int) -> dict:
    outcomes = [example_outcome(tokenizer, messages, error, train_on, max_length)
                for messages, error in zip(batch["messages"], batch["error"])]
    return {key: [outcome[key] for outcome in outcomes] for key in outcomes[0]}


def _file_stamps(paths) -> list[str]:
    """Part of the cache key, so that an edited file is read again."""
    return [f"{p}:{Path(p).stat().st_size}:{Path(p).stat().st_mtime_ns}" for p in paths]


def _has_content(path) -> bool:
    with open(path, "rb") as handle:
        return any(line.strip(b" \t\r\n\xef\xbb\xbf[]") for line in handle)


def _rows(paths, input_format, system_prompt, field_map, stamps):
    yield from read_conversations(paths, input_format, system_prompt, field_map)


def tokenized_rows(paths, data_args: DataArguments, tokenizer) -> datasets.Dataset:
    """Every record of the files, tokenized, with its error, drop and truncation reasons."""
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file")
        if not _has_content(path):
            raise SystemExit(f"{path}: no records (empty input)")
    rows = datasets.Dataset.from_generator(
        _rows, features=ROW_FEATURES,
        gen_kwargs={"paths": list(paths), "input_format": data_args.input_format,
                    "system_prompt": data_args.system_prompt,
                    "field_map": data_args.field_mapping(), "stamps": _file_stamps(paths)})
    return rows.map(_tokenize_rows, batched=True, batch_size=256, num_proc=data_args.num_proc,
                    fn_kwargs={"tokenizer": tokenizer, "train_on": data_args.train_on,
                               "max_length": data_args.max_length},
                    remove_columns=["messages"], desc="Tokenizing")


def split_report(rows: datasets.Dataset) -> dict:
    """Counts that add up: records_read == kept + sum(dropped.values())."""
    dropped, truncated = _counts(rows["dropped"]), _counts(rows["truncated"])
    kept_lengths = sorted(n for n, d in zip(rows["length"], rows["dropped"]) if d is None)
    return {
        "records_read": len(rows),
        "kept": len(kept_lengths),
        "dropped": dropped,
        "truncated": truncated,
        "turns_dropped": sum(rows["turns_dropped"]),
        "tokens": sum(kept_lengths),
        "supervised_tokens": sum(rows["supervised"]),
        "length_percentiles": {f"p{q}": _percentile(kept_lengths, q) for q in (50, 90, 99, 100)},
    }


def _counts(values) -> dict[str, int]:
    counts = {}
    for value in values:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _percentile(sorted_values, q: int) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1)]


def rejects_of(rows: datasets.Dataset) -> list[dict]:
    """Every invalid record as {"source": "FILE:LINE", "error": reason}."""
    return [{"source": s, "error": e} for s, e in zip(rows["source"], rows["error"]) if e is not None]


def kept_examples(rows: datasets.Dataset) -> datasets.Dataset:
    kept = rows.filter(lambda dropped: dropped is None, input_columns="dropped")
    return kept.select_columns(["input_ids", "labels"])


def prepare_dataset(data_args: DataArguments, tokenizer, seed: int = 42) -> tuple[datasets.DatasetDict, dict, list]:
    """DatasetDict of train (and validation), the report, and the rejected lines; exits on invalid input."""
    if not data_args.train_files:
        raise SystemExit("error: no input files (give them as arguments or as train_files)")
    if data_args.train_on not in ("all", "last"):
        raise SystemExit(f"error: train_on must be 'all' or 'last', got {data_args.train_on!r}")
    splits = {"train": tokenized_rows(data_args.train_files, data_args, tokenizer)}
    if data_args.validation_files:
        splits["validation"] = tokenized_rows(data_args.validation_files, data_args, tokenizer)
    rejects = [r for rows in splits.values() for r in rejects_of(rows)]
    if rejects and not data_args.skip_invalid:
        shown = "\n".join(f"{r['source']}: {r['error']}" for r in rejects[:10])
        more = f"\n... and {len(rejects) - 10} more" if len(rejects) > 10 else ""
        raise SystemExit(f"{shown}{more}\nerror: {len(rejects)} invalid record(s); fix them or pass --skip_invalid")
    report = {"files": {name: list(getattr(data_args, f"{name}_files")) for name in splits},
              **{name: split_report(rows) for name, rows in splits.items()}}
    dataset = datasets.DatasetDict({name: kept_examples(rows) for name, rows in splits.items()})
    if "validation" not in dataset and data_args.validation_split_size > 0:
        parts = dataset["train"].train_test_split(test_size=data_args.validation_split_size, seed=seed)
        dataset = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
    report["split_sizes"] = {name: len(split) for name, split in dataset.items()}
    return dataset, report, rejects


def report_table(report: dict) -> str:
    """The report as a short plain-text table."""
    lines = []
    for name in ("train", "validation"):
        if name not in report:
            continue
        r = report[name]
        lines += [f"{name}: {r['records_read']} records read, {r['kept']} kept",
                  f"  dropped:   {r['dropped'] or 'none'}",
                  f"  truncated: {r['truncated'] or 'none'} ({r['turns_dropped']} exchanges dropped)",
                  f"  tokens:    {r['tokens']} total, {r['supervised_tokens']} supervised",
                  f"  lengths:   {r['length_percentiles']}"]
    lines.append(f"split sizes: {report['split_sizes']}")
    return "\n".join(lines)


def marked_text(tokenizer, input_ids, labels, color: bool) -> str:
    """The example decoded, trained spans shown in green (or [[ ]] when not on a terminal)."""
    opened, closed = ("\033[32m", "\033[0m") if color else ("[[", "]]")
    pieces, start = [], 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i])
            pieces.append(text if labels[start] == IGNORE_INDEX else f"{opened}{text}{closed}")
            start = i
    return "".join(pieces)


@dataclass
class PaddingCollator:
    """Pads input_ids with the pad id, labels with -100, attention_mask with 0. It never looks at text."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": torch.full((len(examples), width), self.pad_token_id, dtype=torch.long),
                 "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
                 "labels": torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)}
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            where = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            batch["input_ids"][row, where] = torch.as_tensor(example["input_ids"])
            batch["attention_mask"][row, where] = 1
            batch["labels"][row, where] = torch.as_tensor(example["labels"])
        return batch


@dataclass
class PaddingFreeCollator:
    """Concatenates a batch into one row with no padding at all (TRL calls this padding-free).

    position_ids restart at every example, and from them transformers builds a block-diagonal causal
    mask (sdpa, eager) or varlen boundaries (flash attention), so no example attends to another. Each
    example's first label is masked, since it would be predicted from the previous example. The model
    also gets logits_to_keep, the positions whose next token is trained, and shift_labels, those
    targets: the LM head and the loss then run only where there is something to learn.
    """

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = [token for e in examples for token in e["input_ids"]]
        labels = [label for e in examples for label in [IGNORE_INDEX, *e["labels"][1:]]]
        positions = [p for e in examples for p in range(len(e["input_ids"]))]
        targets = torch.tensor(labels[1:] + [IGNORE_INDEX])
        keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        return {"input_ids": torch.tensor([input_ids]), "position_ids": torch.tensor([positions]),
                "labels": torch.tensor([labels]), "logits_to_keep": keep, "shift_labels": targets[keep][None]}


def default_output_dir(train_files) -> str:
    return str(REPO / "data" / "prepared" / Path(train_files[0]).stem)


def main(model_args: ModelArguments, data_args: DataArguments, prep_args: PrepArguments) -> dict:
    """Prepare, save and report; returns the report."""
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    dataset, report, rejects = prepare_dataset(data_args, tokenizer)
    output_dir = Path(prep_args.output_dir or default_output_dir(data_args.train_files))
    dataset.save_to_disk(str(output_dir))
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if rejects:
        with open(output_dir / "rejects.jsonl", "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rejects)
        print(f"{len(rejects)} invalid record(s) skipped; listed in {output_dir / 'rejects.jsonl'}")
    for example in dataset["train"].select(range(min(prep_args.show, len(dataset["train"])))):
        print(marked_text(tokenizer, example["input_ids"], example["labels"], sys.stdout.isatty()), "\n---")
    print(report_table(report))
    print(f"saved to {output_dir}")
    return report


if __name__ == "__main__":
    main(*parse_args((ModelArguments, DataArguments, PrepArguments), positional="train_files"))
