"""Write each recipe's dialogue files from the data packages pip installed, with their licence beside them.

    python recipe_data.py customer_service     # -> data/customer_service/{train,validation}.jsonl + LICENSE.md
    python recipe_data.py chitchat             # -> data/chitchat/{train,validation}.jsonl + LICENSE.md

The held-out split is fixed by a seeded shuffle, so every clone trains and evaluates on the same records.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import sys
from pathlib import Path

from args import REPO

ZARAGOZA_ATTRIBUTION = """# Data licence: customer_service

Derived from the "Swedish Construction FAQ" (English edition) in the PyPI package
zaragoza-construction-faq==1.2.1: Swedish Construction FAQ by Zaragoza AB, CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/), DOI 10.5281/zenodo.19630803.
Changes: each question/answer pair became a two-message conversation; records were split into
train and validation by a seeded shuffle.
"""
CHITCHAT_ATTRIBUTION = """# Data licence: chitchat

Derived from the Chit Chat Challenge dataset (BYU Perception, Control and Cognition Lab) in the PyPI
package chitchat-dataset==0.9.0, MIT License, Copyright (c) 2019 Perception, Control and Cognition Lab.
Changes: the first speaker became the user and the second the assistant; consecutive messages of one
speaker were joined with newlines; a closing user turn was dropped; split by a seeded shuffle.

{license}
"""


def _package_file(distribution: str, name: str) -> Path:
    return Path(importlib.metadata.distribution(distribution).locate_file(name))


def customer_service_conversations() -> list[dict]:
    """The English FAQ as one user question and one assistant answer per record."""
    path = _package_file("zaragoza-construction-faq", "zaragoza_construction_faq/data/faq-en.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["q"]},
                                         {"role": "assistant", "content": r["a"]}]} for r in records]


def chitchat_conversations() -> list[dict]:
    """Human-human chats as alternating user/assistant turns, ending on the assistant."""
    path = _package_file("chitchat-dataset", "chitchat_dataset/dataset.json")
    conversations = []
    for chat_id, chat in json.loads(path.read_text(encoding="utf-8")).items():
        turns = ["\n".join(u["text"].strip() for u in group if u["text"].strip()) for group in chat["messages"]]
        turns = [t for t in turns if t]
        turns = turns[: len(turns) // 2 * 2]
        if turns:
            conversations.append({"id": chat_id, "messages": [
                {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]})
    return conversations


RECIPES = {
    "customer_service": (customer_service_conversations, 50, lambda: ZARAGOZA_ATTRIBUTION),
    "chitchat": (chitchat_conversations, 150, lambda: CHITCHAT_ATTRIBUTION.format(
        license=_package_file("chitchat-dataset", "chitchat_dataset-0.9.0.dist-info/LICENSE").read_text())),
}


def write_recipe_data(name: str, out_dir: Path | None = None, seed: int = 0) -> Path:
    """Write train.jsonl, validation.jsonl and LICENSE.md for one recipe; returns the folder."""
    conversations_of, held_out, attribution = RECIPES[name]
    records = sorted(conversations_of(), key=lambda r: r["id"])
    random.Random(seed).shuffle(records)
    out_dir = out_dir or REPO / "data" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, part in (("validation", records[:held_out]), ("train", records[held_out:])):
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in part)
    (out_dir / "LICENSE.md").write_text(attribution())
    return out_dir


if __name__ == "__main__":
    for recipe in sys.argv[1:] or RECIPES:
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        print(f"wrote {write_recipe_data(recipe)}")
