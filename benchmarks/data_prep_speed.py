"""Data preparation speed: chattune vs TRL's SFTTrainer on the same single-turn records, and how chattune
scales with the number of turns per conversation.

    python benchmarks/data_prep_speed.py                     # needs requirements-bench.txt (TRL)
    python benchmarks/data_prep_speed.py --copies 8 --turns 8,32,128

Single-turn: the English FAQ (503 Q&As) repeated --copies times, prepared with completion-only masks by
both. Multi-turn: synthetic chats holding the same number of messages in all, T turns each; with linear
preparation the time per message stays flat as T grows. The quadratic baseline renders every prefix
(the path chattune falls back to for templates that are not a plain concatenation of turns).
The last line is one JSON object with the ratio (chattune over TRL, records/s) and per-message times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402

import data_prep  # noqa: E402
from args import DEFAULT_MODEL, DataArguments  # noqa: E402
from conversations import read_conversations  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="Times the 503-record FAQ is repeated")
    parser.add_argument("--turns", default="4,16,64,256", help="Exchanges per synthetic conversation")
    parser.add_argument("--messages", type=int, default=4096, help="Messages in all, per turn count")
    parser.add_argument("--skip_trl", action="store_true")
    return parser.parse_args()


def faq_records(copies: int) -> list[dict]:
    import importlib.metadata

    path = importlib.metadata.distribution("zaragoza-construction-faq").locate_file(
        "zaragoza_construction_faq/data/faq-en-sharegpt.jsonl")
    return [r for _ in range(copies) for r in map(json.loads, Path(path).read_text().splitlines())]


def write(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chattune_seconds(path: Path, tokenizer, max_length: int = 1024) -> float:
    start = time.perf_counter()
    data_prep.prepare_dataset(DataArguments(train_files=[str(path)], max_length=max_length), tokenizer)
    return time.perf_counter() - start


def trl_seconds(path: Path, tokenizer) -> float:
    """TRL's own dataset preparation (chat template, tokenization, completion mask) on the same records."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in r["messages"][:-1]],
             "completion": [{"role": "assistant", "content": r["messages"][-1]["content"]}]}
            for r in read_conversations([str(path)])]
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, max_length=1024, completion_only_loss=True, report_to="none",
                           use_cpu=True)
        model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL)
        trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows[:8]),
                             processing_class=tokenizer)
        dataset = datasets.Dataset.from_list(rows)  # converting records is not timed for TRL: its input form
        start = time.perf_counter()
        trainer._prepare_dataset(dataset, tokenizer, config, False, None, "train")
        return time.perf_counter() - start


def synthetic_chats(turns: int, messages: int) -> list[dict]:
    chats = []
    for c in range(max(1, messages // (2 * turns))):
        chat = []
        for t in range(turns):
            chat += [{"role": "user", "content": f"Question {t} of chat {c}: how long does a permit take?"},
                     {"role": "assistant", "content": f"Answer {t}: about ten weeks for chat {c}."}]
        chats.append({"messages": chat})
    return chats


def main(args) -> dict:
    datasets.disable_caching()  # every run tokenizes for real
    datasets.disable_progress_bars()
    tokenizer = data_prep.load_tokenizer(DEFAULT_MODEL)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        faq = write(faq_records(args.copies), Path(tmp) / "faq.jsonl")
        records = len(faq.read_text().splitlines())
        ours = chattune_seconds(faq, tokenizer)
        print(f"single-turn, {records} records: chattune {ours:.2f} s ({records / ours:.0f} records/s)")
        results["chattune_single_turn_s"] = ours
        if not args.skip_trl:
            theirs = trl_seconds(faq, tokenizer)
            print(f"single-turn, {records} records: TRL      {theirs:.2f} s ({records / theirs:.0f} records/s)")
            results.update(trl_single_turn_s=theirs, ratio=theirs / ours)
        print(f"\n{'turns':>6}{'chats':>7}{'linear ms/msg':>15}{'prefix-render ms/msg':>22}")
        per_message = {}
        for turns in map(int, args.turns.split(",")):
            chats = synthetic_chats(turns, args.messages)
            path = write(chats, Path(tmp) / f"chats{turns}.jsonl")
            linear = chattune_seconds(path, tokenizer, max_length=10 ** 6)
            with mock.patch.object(data_prep, "_spans_from_pieces", return_value=None):
                quadratic = chattune_seconds(path, tokenizer, max_length=10 ** 6) if turns <= 64 else float("nan")
            total = len(chats) * 2 * turns
            per_message[turns] = {"linear_ms": 1000 * linear / total, "prefix_render_ms": 1000 * quadratic / total}
            print(f"{turns:>6}{len(chats):>7}{per_message[turns]['linear_ms']:>15.3f}"
                  f"{per_message[turns]['prefix_render_ms']:>22.3f}")
        results["per_message_ms"] = per_message
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main(parse())
