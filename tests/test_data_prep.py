"""Exact input_ids and labels for every record shape, turn policy, weight, system prompt and truncation path.

Token ids are SmolLM2's; -100 marks a position that is not trained (M below).
"""

import pytest
import torch

from args import DataArguments
from conftest import write_jsonl
from conversations import to_messages
from data_prep import (FALLBACK_CHAT_TEMPLATE, PaddingCollator, TemplateMismatch, encode, encode_within,
                       load_tokenizer, marked_text, prepare_dataset)

M = -100

# "Be brief." / "Hi" / "Hello!" as one exchange: every token, and whether it is trained.
SINGLE_TURN = [
    #  input_id  label       token
    (1,     M),      # <|im_start|>
    (9690,  M),      # system
    (198,   M),      # \n
    (6077,  M),      # Be
    (5453,  M),      # Ġbrief
    (30,    M),      # .
    (2,     M),      # <|im_end|>
    (198,   M),      # \n
    (1,     M),      # <|im_start|>
    (4093,  M),      # user
    (198,   M),      # \n
    (26843, M),      # Hi
    (2,     M),      # <|im_end|>
    (198,   M),      # \n
    (1,     M),      # <|im_start|>
    (520,   M),      # ass
    (9531,  M),      # istant
    (198,   M),      # \n
    (19556, 19556),  # Hello           <- the reply is trained,
    (17,    17),     # !
    (2,     2),      # <|im_end|>      <- and so is the token that ends it (pad == eos here),
    (198,   M),      # \n              <- but not the template's newline after it.
]
IDS = [i for i, _ in SINGLE_TURN]
LABELS = [label for _, label in SINGLE_TURN]

# Pieces of the same rendering, for the multi-turn cases.
SYSTEM = [1, 9690, 198, 6077, 5453, 30, 2, 198]             # <|im_start|>system\nBe brief.<|im_end|>\n
DEFAULT_SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
                  407, 19712, 8182, 2, 198]                 # the template's own "You are a helpful AI ..."
USER_HI = [1, 4093, 198, 26843, 2, 198]                     # <|im_start|>user\nHi<|im_end|>\n
USER_BYE = [1, 4093, 198, 3087, 85, 2, 198]                 # <|im_start|>user\nBye<|im_end|>\n
ASSISTANT = [1, 520, 9531, 198]                             # <|im_start|>assistant\n
HELLO = [19556, 17, 2]                                      # Hello!<|im_end|>
CIAO = [51, 28467, 30, 2]                                   # Ciao.<|im_end|>
NL = [198]


def masked(ids):
    return [M] * len(ids)


def messages(*pairs, system="Be brief.", weights=None):
    out = [{"role": "system", "content": system, "weight": 0}] if system else []
    for i, (role, content) in enumerate(pairs):
        weight = int(role == "assistant") if weights is None else weights[i]
        out.append({"role": role, "content": content, "weight": weight})
    return out


MULTI_TURN = messages(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Ciao."))


def test_single_turn_trains_reply_and_closing_token_only(tokenizer):
    encoded = encode(tokenizer, messages(("user", "Hi"), ("assistant", "Hello!")))
    assert encoded["input_ids"] == IDS
    assert encoded["labels"] == LABELS


@pytest.mark.parametrize("record", [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello!"}]},
    {"context": "Hi", "response": "Hello!", "system": "Be brief."},
    {"context": ["Hi"], "response": "Hello!", "system": "Be brief."},
    {"prompt": "Hi", "completion": "Hello!", "system": "Be brief."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "completion": [{"role": "assistant", "content": "Hello!"}]},
    {"instruction": "Hi", "input": "", "output": "Hello!", "system": "Be brief."},
], ids=["messages", "sharegpt", "context_str", "context_list", "prompt_completion", "prompt_completion_chat",
        "alpaca"])
def test_every_record_shape_gives_the_same_tokens(tokenizer, record):
    encoded = encode(tokenizer, to_messages(record))
    assert encoded["input_ids"] == IDS
    assert encoded["labels"] == LABELS


def test_command_line_system_prompt_fills_in_only_where_a_record_has_none(tokenizer):
    assert encode(tokenizer, to_messages({"prompt": "Hi", "completion": "Hello!"}, system_prompt="Be brief."))[
        "input_ids"] == IDS
    own = to_messages({"prompt": "Hi", "completion": "Hello!", "system": "Be brief."}, system_prompt="Other.")
    assert encode(tokenizer, own)["input_ids"] == IDS


def test_no_system_message_uses_the_templates_default(tokenizer):
    encoded = encode(tokenizer, messages(("user", "Hi"), ("assistant", "Hello!"), system=None))
    assert encoded["input_ids"] == DEFAULT_SYSTEM + USER_HI + ASSISTANT + HELLO + NL
    assert encoded["labels"] == masked(DEFAULT_SYSTEM + USER_HI + ASSISTANT) + HELLO + [M]


def test_multi_turn_trains_every_assistant_turn_by_default(tokenizer):
    encoded = encode(tokenizer, MULTI_TURN, train_on="all")
    assert encoded["input_ids"] == SYSTEM + USER_HI + ASSISTANT + HELLO + NL + USER_BYE + ASSISTANT + CIAO + NL
    assert encoded["labels"] == (masked(SYSTEM + USER_HI + ASSISTANT) + HELLO + [M]
                                 + masked(USER_BYE + ASSISTANT) + CIAO + [M])


def test_multi_turn_last_policy_trains_only_the_final_reply(tokenizer):
    encoded = encode(tokenizer, MULTI_TURN, train_on="last")
    assert encoded["labels"] == (masked(SYSTEM + USER_HI + ASSISTANT + HELLO + NL + USER_BYE + ASSISTANT)
                                 + CIAO + [M])


def test_weight_zero_reply_is_context_not_target(tokenizer):
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!", "weight": 0},
                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao."}]}
    encoded = encode(tokenizer, to_messages(record))
    assert encoded["labels"] == (masked(SYSTEM + USER_HI + ASSISTANT + HELLO + NL + USER_BYE + ASSISTANT)
                                 + CIAO + [M])


def test_truncation_drops_oldest_exchange_and_keeps_system(tokenizer):
    full = len(SYSTEM + USER_HI + ASSISTANT + HELLO + NL + USER_BYE + ASSISTANT + CIAO + NL)
    assert full == 38
    encoded, reason, dropped = encode_within(tokenizer, MULTI_TURN, "all", max_length=full - 1)
    assert (reason, dropped) == ("dropped_oldest_turns", 1)
    assert encoded["input_ids"] == SYSTEM + USER_BYE + ASSISTANT + CIAO + NL
    assert encoded["labels"] == masked(SYSTEM + USER_BYE + ASSISTANT) + CIAO + [M]


def test_truncation_keeps_an_example_that_fits_exactly(tokenizer):
    encoded, reason, dropped = encode_within(tokenizer, MULTI_TURN, "all", max_length=38)
    assert (len(encoded["input_ids"]), reason, dropped) == (38, None, 0)


def test_final_turn_that_cannot_fit_drops_the_example(tokenizer):
    fits_last_only = len(SYSTEM + USER_BYE + ASSISTANT + CIAO + NL)  # 24 tokens
    assert encode_within(tokenizer, MULTI_TURN, "all", fits_last_only - 1) == (None, "final_turn_too_long", 1)


def test_pad_equal_to_eos_keeps_eos_trained_after_padding(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    collate = PaddingCollator(pad_token_id=tokenizer.pad_token_id)
    batch = collate([{"input_ids": [5, 6, 2], "labels": [M, 6, 2]}, {"input_ids": [7, 2], "labels": [M, 2]}])
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 2], [7, 2, 2]]))
    assert torch.equal(batch["labels"], torch.tensor([[M, 6, 2], [M, 2, M]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))


def test_collator_pads_to_a_multiple():
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)([{"input_ids": [5, 6, 7, 8, 9],
                                                                    "labels": [M, M, 7, 8, 9]}])
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[M, M, 7, 8, 9, M, M, M]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]]))
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long


def test_tokenizer_without_template_gets_the_fallback(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    plain = load_tokenizer(str(tmp_path))
    assert plain.chat_template == FALLBACK_CHAT_TEMPLATE
    encoded = encode(plain, messages(("user", "Hi"), ("assistant", "Hello!"), system=None))
    assert plain.decode(encoded["input_ids"]) == "User:\nHi\n\nAssistant:\nHello!<|im_end|>\n\n"
    trained = [i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != M]
    assert plain.decode(trained) == "Hello!<|im_end|>"


def test_template_that_rewrites_earlier_turns_fails_loudly(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    odd = load_tokenizer(str(tmp_path))
    odd.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    with pytest.raises(TemplateMismatch, match="message 3"):
        encode(odd, messages(("user", "Hi"), ("assistant", "Hello!")))


def test_reply_whose_first_token_merges_with_the_header_fails_loudly(tokenizer):
    # "\n " is one token, so the generation prompt's "\n" is not a token prefix of this reply.
    with pytest.raises(TemplateMismatch, match="message 3"):
        encode(tokenizer, messages(("user", "Hi"), ("assistant", "  Hello!")))


def test_marked_text_brackets_the_trained_tokens(tokenizer):
    text = marked_text(tokenizer, IDS, LABELS, color=False)
    assert text.endswith("<|im_start|>assistant\n[[Hello!<|im_end|>]]\n")
    assert text.count("[[") == 1


def test_prepare_dataset_reports_counts_that_add_up(tokenizer, tmp_path):
    long_chat = {"messages": [m for m in MULTI_TURN]}
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"prompt": "Hi", "completion": "Hello!", "system": "Be brief."},     # kept
        long_chat,                                                            # kept, oldest exchange dropped
        {"prompt": "Hi " * 40, "completion": "Hello!"},                      # final turn too long
        {"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!", "weight": 0}]},  # nothing to train
    ])
    args = DataArguments(train_files=[str(path)], max_length=36)
    dataset, report, rejects = prepare_dataset(args, tokenizer)
    assert rejects == []
    assert report["train"]["records_read"] == 4
    assert report["train"]["kept"] == 2 == len(dataset["train"])
    assert report["train"]["dropped"] == {"final_turn_too_long": 1, "no_trained_tokens": 1}
    assert report["train"]["truncated"] == {"dropped_oldest_turns": 1}
    assert report["train"]["tokens"] == len(IDS) + len(SYSTEM + USER_BYE + ASSISTANT + CIAO + NL)
    assert report["train"]["supervised_tokens"] == len(HELLO) + len(CIAO)
    assert dataset["train"][0] == {"input_ids": IDS, "labels": LABELS}


def test_validation_split_is_deterministic_given_the_seed(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(20)])
    args = DataArguments(train_files=[str(path)], validation_split_size=0.25)
    first, _, _ = prepare_dataset(args, tokenizer, seed=3)
    second, _, _ = prepare_dataset(args, tokenizer, seed=3)
    assert {name: len(split) for name, split in first.items()} == {"train": 15, "validation": 5}
    assert first["validation"]["input_ids"] == second["validation"]["input_ids"]
    assert not set(map(tuple, first["validation"]["input_ids"])) & set(map(tuple, first["train"]["input_ids"]))


def test_linear_span_finder_agrees_with_rendering_every_prefix(tokenizer):
    from data_prep import _spans_from_pieces, _spans_from_prefixes, render

    for conversation in (MULTI_TURN, MULTI_TURN[1:], messages(("user", "a\n"), ("assistant", " b "),
                                                              ("user", "c"), ("assistant", "d\n\n"))):
        text = render(tokenizer, conversation)
        fast = _spans_from_pieces(tokenizer, conversation, text)
        assert fast is not None  # SmolLM2's template is a plain concatenation of turns
        assert fast == _spans_from_prefixes(tokenizer, conversation, text)


def test_linear_span_finder_declines_templates_that_depend_on_position(tokenizer, tmp_path):
    from data_prep import _spans_from_pieces, render

    tokenizer.save_pretrained(tmp_path)
    odd = load_tokenizer(str(tmp_path))
    odd.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %};{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}>{% endif %}")
    assert _spans_from_pieces(odd, MULTI_TURN, render(odd, MULTI_TURN)) is None


def test_example_dropped_after_truncation_counts_as_dropped_not_truncated(tokenizer):
    from data_prep import example_outcome

    untrained_last = messages(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Ciao."),
                              weights=[0, 1, 0, 0])
    outcome = example_outcome(tokenizer, untrained_last, None, "all", max_length=37)
    assert (outcome["dropped"], outcome["truncated"], outcome["turns_dropped"]) == ("no_trained_tokens", None, 0)
    assert outcome["input_ids"] == [] and outcome["supervised"] == 0
