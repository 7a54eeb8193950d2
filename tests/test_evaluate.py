"""Metrics on literal cases, batch- and padding-invariant perplexity, the report, and chat --prompt end to end."""

import json
import subprocess
import sys

import evaluate
import pytest
import torch
from transformers import AutoModelForCausalLM

from chat import prompt_within
from conftest import REPO, write_jsonl
from data_prep import encode, render
from evaluate_model import EvalArguments, generation_autocast, generation_kwargs, main as evaluate_main, response_loss


def test_chrf_on_literal_cases():
    chrf = evaluate.load(str(REPO / "metrics" / "chrf"))
    assert chrf.compute(predictions=["the cat sat"], references=["the cat sat"])["score"] == 100.0
    assert chrf.compute(predictions=["xyz"], references=["abc"])["score"] == 0.0
    # Character 1-grams: precision 2/2, recall 2/3; 2-grams: 1/1 and 1/2 (no 3-grams in "ab").
    # Averaged P = 1, R = 7/12; F-beta with beta 2 = 5PR / (4P + R) = 35/55.
    assert chrf.compute(predictions=["ab"], references=["abc"])["score"] == pytest.approx(100 * 35 / 55)


def test_rouge_l_on_literal_cases():
    rouge_l = evaluate.load(str(REPO / "metrics" / "rouge_l"))
    # LCS of 3 words: precision 3/3, recall 3/4, F = 6/7.
    assert rouge_l.compute(predictions=["the cat sat"], references=["the cat sat down"])["rougeL"] == \
        pytest.approx(6 / 7)
    assert rouge_l.compute(predictions=["a b", "x"], references=["a b", "y"])["rougeL"] == pytest.approx(0.5)


def test_response_loss_does_not_depend_on_batch_size_or_padding_side(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    conversations = [[{"role": "user", "content": "Hi" * n, "weight": 0},
                      {"role": "assistant", "content": "Hello there" * (4 - n), "weight": 1}] for n in (1, 2, 3)]
    examples = [{k: encode(tokenizer, c)[k] for k in ("input_ids", "labels")} for c in conversations]
    results = [response_loss(model, examples, batch_size, tokenizer.pad_token_id, side)
               for batch_size in (1, 2, 3) for side in ("right", "left")]
    assert len({r["response_tokens"] for r in results}) == 1
    for result in results[1:]:
        assert result["response_loss"] == pytest.approx(results[0]["response_loss"], rel=1e-5)
    assert results[0]["perplexity"] == pytest.approx(torch.tensor(results[0]["response_loss"]).exp().item())


def test_prompt_within_drops_oldest_exchanges_and_keeps_system(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}]
    for n in range(3):
        messages += [{"role": "user", "content": f"Question {n}"}, {"role": "assistant", "content": f"Answer {n}"}]
    messages.append({"role": "user", "content": "Last question"})
    full = len(tokenizer(render(tokenizer, messages, True), add_special_tokens=False)["input_ids"])
    text, kept = prompt_within(tokenizer, messages, full - 1)
    assert [m["content"] for m in kept] == ["Be brief.", "Question 1", "Answer 1", "Question 2", "Answer 2",
                                            "Last question"]
    assert text == render(tokenizer, kept, add_generation_prompt=True)


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir, tmp_path_factory):
    import train
    from args import ChatTrainingArguments, DataArguments, ModelArguments, parse_args

    folder = tmp_path_factory.mktemp("evaluated")
    records = [{"prompt": f"Say {w}.", "completion": f"{w}."} for w in ("yes", "no", "maybe", "hello") * 4]
    train_file = write_jsonl(folder / "train.jsonl", records)
    held_out = write_jsonl(folder / "held_out.jsonl", records[:4])
    out = folder / "run"
    train.main(*parse_args((ModelArguments, DataArguments, ChatTrainingArguments), [
        "--model_name_or_path", str(tiny_model_dir), "--train_files", str(train_file),
        "--validation_files", str(held_out), "--output_dir", str(out), "--max_steps", "6", "--learning_rate", "5.0e-3",
        "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy", "no",
        "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]))
    return out


def test_evaluation_writes_results_report_and_plot(trained_dir):
    results = evaluate_main(EvalArguments(model_dir=str(trained_dir), max_new_tokens=8, batch_size=2))
    saved = json.loads((trained_dir / "eval_results.json").read_text())
    assert saved["base"] == results["base"] and saved["conversations"] == 4
    for side in ("base", "fine_tuned"):
        assert set(saved[side]) >= {"response_loss", "perplexity", "chrf", "rougeL", "stop_rate",
                                    "mean_generated_tokens", "mean_reference_tokens"}
    assert saved["fine_tuned"]["response_loss"] < saved["base"]["response_loss"]
    assert [s["reference"] for s in saved["samples"]] == ["yes.", "no.", "maybe.", "hello."]
    report = (trained_dir / "report.md").read_text()
    for section in ("## Before and after", "## Loss by step", "![train and held-out loss](loss.png)",
                    "## Samples", "**Reference**", "> yes."):
        assert section in report
    assert "<h2>Before and after</h2>" in (trained_dir / "report.html").read_text()
    assert (trained_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chat_prompt_streams_the_greedy_reply_and_exits(trained_dir, tokenizer):
    result = subprocess.run([sys.executable, str(REPO / "chat.py"), str(trained_dir), "--prompt", "Say yes.",
                             "--max_new_tokens", "6"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(trained_dir, dtype=torch.float32).eval()
    prompt = render(tokenizer, [{"role": "user", "content": "Say yes."}], add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), generation_autocast(model):
        output = model.generate(**inputs, **generation_kwargs(tokenizer, 6, 1.1))
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert result.stdout.strip() == expected.strip()
