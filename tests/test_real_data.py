"""The real data packages, prepared end to end: every kept example trains exactly its assistant text + <|im_end|>."""

import importlib.metadata

import pytest

from args import DataArguments
from conftest import write_jsonl
from conversations import read_conversations
from data_prep import IGNORE_INDEX, prepare_dataset
from recipe_data import chitchat_conversations

FAQ = "zaragoza_construction_faq/data/"


def faq_file(name: str) -> str:
    return str(importlib.metadata.distribution("zaragoza-construction-faq").locate_file(FAQ + name))


def trained_runs(input_ids, labels) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


def check_supervision(tokenizer, data_args: DataArguments, expected_records: int):
    dataset, report, rejects = prepare_dataset(data_args, tokenizer)
    train = report["train"]
    assert rejects == []
    assert train["records_read"] == expected_records
    assert train["kept"] + sum(train["dropped"].values()) == train["records_read"]
    assert train["kept"] == len(dataset["train"])
    rows = read_conversations(data_args.train_files, field_map=data_args.field_mapping())
    for row, example in zip(rows, dataset["train"]):  # nothing is dropped here, so rows line up
        replies = [m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant"]
        decoded = [tokenizer.decode(run) for run in trained_runs(example["input_ids"], example["labels"])]
        assert decoded == replies[len(replies) - len(decoded):], row["source"]
    assert sum(len(e) for e in dataset["train"]["labels"]) == train["tokens"]
    return train


@pytest.mark.parametrize("name,field_map", [("faq-en.jsonl", ["q=prompt", "a=completion"]),
                                            ("faq-en-sharegpt.jsonl", []), ("faq-en-alpaca.jsonl", []),
                                            ("faq-sharegpt.jsonl", [])])
def test_zaragoza_faq_files(tokenizer, name, field_map):
    report = check_supervision(tokenizer, DataArguments(train_files=[faq_file(name)], field_map=field_map), 503)
    assert report["dropped"] == {} and report["truncated"] == {}


def test_chitchat_multi_turn(tokenizer, tmp_path):
    chats = [{"messages": c["messages"]} for c in chitchat_conversations()[:300]]
    path = write_jsonl(tmp_path / "chitchat.jsonl", chats)
    report = check_supervision(tokenizer, DataArguments(train_files=[str(path)], max_length=2048), 300)
    assert report["dropped"] == {}
    assert report["supervised_tokens"] > 0.3 * report["tokens"]
