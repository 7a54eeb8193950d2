"""Talk to a model in the terminal, rendered with the same code as training; replies stream as they are made.

    python chat.py outputs/customer_service
    python chat.py outputs/customer_service --system "Answer in one sentence."
    python chat.py outputs/customer_service --prompt "Do I need a building permit for a carport?"
    make chat RECIPE=customer_service

In the chat, /reset starts over and Ctrl-D or Ctrl-C quits. The oldest exchanges are dropped when the
conversation outgrows the context; each reply stops at the end of the assistant turn.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TextStreamer

from args import parse_args
from data_prep import drop_oldest_exchanges, load_tokenizer, render
from embedded_model import resolve_model_path
from evaluate_model import generation_autocast, generation_kwargs, recipe_of


@dataclass
class ChatArguments:
    model_dir: str = field(default="", metadata={"help": "A model folder or Hub id (positional)."})
    system: str | None = field(default=None, metadata={"help": "System prompt. Default: the recipe's system_prompt."})
    prompt: str | None = field(default=None, metadata={"help": "Answer this once and exit."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply, in tokens."})
    repetition_penalty: float = field(default=1.1, metadata={"help": "Penalty on repeated tokens (1.0: none)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Context budget in tokens. Default: the recipe's max_length, else 2048."})


def prompt_within(tokenizer, messages: list[dict], budget: int) -> tuple[str, list[dict]]:
    """The generation prompt and the messages it holds, oldest exchanges dropped until it fits the budget."""
    users = sum(m["role"] == "user" for m in messages)
    for dropped in range(users):
        kept = drop_oldest_exchanges(messages, dropped)
        text = render(tokenizer, kept, add_generation_prompt=True)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget:
            break
    return text, kept


def reply(model, tokenizer, messages: list[dict], args: ChatArguments, budget: int) -> tuple[str, list[dict]]:
    """Stream the assistant's reply to stdout; returns it and the conversation that was kept."""
    text, kept = prompt_within(tokenizer, messages, budget - args.max_new_tokens)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), generation_autocast(model):
        output = model.generate(**inputs, **generation_kwargs(tokenizer, args.max_new_tokens, args.repetition_penalty),
                                streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return answer, kept + [{"role": "assistant", "content": answer}]


def main(args: ChatArguments) -> None:
    recipe = recipe_of(Path(args.model_dir))
    system = args.system if args.system is not None else recipe.get("system_prompt")
    budget = args.max_length or recipe.get("max_length") or 2048
    tokenizer = load_tokenizer(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model_dir), dtype=torch.float32).eval()
    start = [{"role": "system", "content": system}] if system else []
    if args.prompt is not None:
        reply(model, tokenizer, start + [{"role": "user", "content": args.prompt}], args, budget)
        return
    print("chat: /reset starts over, Ctrl-D quits", file=sys.stderr)
    messages = list(start)
    try:
        while True:
            line = input("you> ").strip()
            if line == "/reset":
                messages = list(start)
                print("(conversation cleared)", file=sys.stderr)
            elif line:
                print("bot> ", end="", flush=True)
                _, messages = reply(model, tokenizer, messages + [{"role": "user", "content": line}], args, budget)
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)


if __name__ == "__main__":
    (chat_args,) = parse_args((ChatArguments,), positional="model_dir")
    if not chat_args.model_dir:
        raise SystemExit("usage: python chat.py MODEL_DIR [--prompt TEXT] [--system TEXT]")
    main(chat_args)
