"""Show on held-out dialogues whether a fine-tune helped: the base model and the fine-tuned one, side by side.

    python evaluate_model.py outputs/customer_service                 # held-out files from its recipe.yaml
    python evaluate_model.py outputs/customer_service --eval_files held_out.jsonl --max_samples 20
    make eval RECIPE=customer_service

Measures response-only loss and perplexity with exactly the training masks, then greedy generations
(repetition penalty 1.1, bf16 autocast where the hardware has it) scored by chrF and ROUGE-L (local
`evaluate` modules in metrics/), the stop rate (replies that end with the end-of-turn token within the
budget) and reply lengths. Writes eval_results.json, report.md,
report.html and loss.png into the output folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import evaluate
import torch
import yaml
from transformers import AutoModelForCausalLM

from args import DEFAULT_MODEL, REPO, DataArguments, parse_args
from conversations import read_conversations
from data_prep import (IGNORE_INDEX, PaddingCollator, drop_oldest_exchanges, encode_within, load_tokenizer,
                       render, turn_end_token_ids)
from embedded_model import resolve_model_path
from report import write_report


@dataclass
class EvalArguments:
    model_dir: str = field(default="", metadata={"help": "The fine-tuned output folder (positional)."})
    base_model: str | None = field(
        default=None, metadata={"help": "Model to compare against. Default: model_name_or_path of its recipe.yaml."})
    eval_files: list[str] = field(
        default_factory=list, metadata={"help": "Held-out dialogue files. Default: validation_files of its recipe."})
    max_samples: int = field(default=50, metadata={"help": "Held-out conversations to generate replies for."})
    max_new_tokens: int = field(default=192, metadata={"help": "Token budget of each generated reply."})
    repetition_penalty: float = field(
        default=1.1, metadata={"help": "Greedy decoding with this penalty on repeated tokens (1.0: none); "
                                       "small models otherwise loop instead of ending their turn."})
    batch_size: int = field(default=8, metadata={"help": "Conversations per forward pass for the loss."})
    generation_batch_size: int = field(default=25, metadata={"help": "Prompts generated together."})


def response_loss(model, examples, batch_size: int, pad_token_id: int, padding_side: str = "right") -> dict:
    """Mean negative log-likelihood over the trained tokens only; batching and padding do not change it."""
    collate = PaddingCollator(pad_token_id, padding_side=padding_side)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(examples[start:start + batch_size]).items()}
        # Positions count real tokens only, so a left-padded row sees the same positions as a right-padded one.
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=positions).logits.float()
        targets = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="sum",
                                                   ignore_index=IGNORE_INDEX).item()
        count += int((targets != IGNORE_INDEX).sum())
    loss = total / max(count, 1)
    return {"response_loss": loss, "perplexity": math.exp(loss), "response_tokens": count}


def generation_kwargs(tokenizer, max_new_tokens: int, repetition_penalty: float) -> dict:
    """Greedy decoding that stops at the end of the assistant turn: the same for evaluation and chat."""
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "repetition_penalty": repetition_penalty,
            "eos_token_id": turn_end_token_ids(tokenizer), "pad_token_id": tokenizer.pad_token_id}


def generation_autocast(model):
    """bf16 autocast where the hardware has it (deterministic still); losses stay in float32."""
    device = model.device.type
    supported = torch.cuda.is_bf16_supported() if device == "cuda" else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.autocast(device, dtype=torch.bfloat16, enabled=supported)


def generate_replies(model, tokenizer, prompts: list[str], args: EvalArguments) -> list[dict]:
    """Greedy replies: text up to the end-of-turn token, token count, and whether it stopped in budget."""
    kwargs = generation_kwargs(tokenizer, args.max_new_tokens, args.repetition_penalty)
    tokenizer.padding_side = "left"
    replies = []
    for start in range(0, len(prompts), args.generation_batch_size):
        batch = tokenizer(prompts[start:start + args.generation_batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.no_grad(), generation_autocast(model):
            output = model.generate(**batch, **kwargs)
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i for i, token in enumerate(row) if token in kwargs["eos_token_id"]), None)
            kept = row if end is None else row[:end + 1]
            replies.append({"text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                            "tokens": len(kept), "stopped": end is not None})
    return replies


def held_out_conversations(files, data_args: DataArguments, tokenizer) -> list[dict]:
    """Held-out conversations with their training encoding, prompt (up to the last reply) and reference."""
    items = []
    for row in read_conversations(files, data_args.input_format, data_args.system_prompt,
                                  data_args.field_mapping()):
        if row["error"]:
            raise SystemExit(f"{row['source']}: {row['error']}")
        encoded, _, dropped = encode_within(tokenizer, row["messages"], data_args.train_on, data_args.max_length)
        if encoded is None:
            continue
        messages = drop_oldest_exchanges(row["messages"], dropped)  # what the model saw in training
        items.append({"example": {"input_ids": encoded["input_ids"], "labels": encoded["labels"]},
                      "context": messages[:-1], "reference": messages[-1]["content"],
                      "prompt": render(tokenizer, messages[:-1], add_generation_prompt=True)})
    return items


def model_scores(model_path: str, tokenizer, items, args: EvalArguments) -> tuple[dict, list[dict]]:
    """Loss, perplexity, chrF, ROUGE-L, stop rate and lengths of one model on the held-out items."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_path), dtype=torch.float32).to(device).eval()
    scores = response_loss(model, [i["example"] for i in items], args.batch_size, tokenizer.pad_token_id)
    sampled = items[:args.max_samples]
    replies = generate_replies(model, tokenizer, [i["prompt"] for i in sampled], args)
    predictions, references = [r["text"] for r in replies], [i["reference"] for i in sampled]
    scores["chrf"] = evaluate.load(str(REPO / "metrics" / "chrf")).compute(
        predictions=predictions, references=references)["score"]
    scores["rougeL"] = evaluate.load(str(REPO / "metrics" / "rouge_l")).compute(
        predictions=predictions, references=references)["rougeL"]
    scores["stop_rate"] = sum(r["stopped"] for r in replies) / len(replies)
    scores["mean_generated_tokens"] = sum(r["tokens"] for r in replies) / len(replies)
    scores["mean_reference_tokens"] = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                          for t in references) / len(references)
    return scores, replies


def recipe_of(model_dir: Path) -> dict:
    path = model_dir / "recipe.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def main(args: EvalArguments) -> dict:
    """Score the base and fine-tuned models on the held-out files and write the report; returns the results."""
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: not a model folder (no config.json)")
    recipe = recipe_of(model_dir)
    data_args = DataArguments(**{f.name: recipe[f.name] for f in fields(DataArguments) if f.name in recipe})
    files = args.eval_files or data_args.validation_files
    if not files:
        raise SystemExit("error: no held-out files: pass --eval_files (the recipe names no validation_files)")
    base = args.base_model or recipe.get("model_name_or_path", DEFAULT_MODEL)
    tokenizer = load_tokenizer(str(model_dir))
    items = held_out_conversations(files, data_args, tokenizer)
    if not items:
        raise SystemExit(f"{', '.join(files)}: no held-out conversation fits max_length {data_args.max_length}")
    base_scores, base_replies = model_scores(base, tokenizer, items, args)
    tuned_scores, tuned_replies = model_scores(str(model_dir), tokenizer, items, args)
    results = {"model_dir": str(model_dir), "base_model": base, "eval_files": files, "conversations": len(items),
               "generated": len(base_replies), "max_new_tokens": args.max_new_tokens,
               "base": base_scores, "fine_tuned": tuned_scores,
               "samples": [{"context": i["context"], "reference": i["reference"], "base": b["text"],
                            "fine_tuned": t["text"]} for i, b, t in zip(items, base_replies, tuned_replies)]}
    (model_dir / "eval_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_report(model_dir, results)
    print(json.dumps({"base": base_scores, "fine_tuned": tuned_scores}, indent=2))
    print(f"report: {model_dir / 'report.md'} and {model_dir / 'report.html'}")
    return results


if __name__ == "__main__":
    (eval_args,) = parse_args((EvalArguments,), positional="model_dir")
    main(eval_args)
