"""train.py end to end on a tiny random Llama: outputs, resume, recipes, argument errors and 2-process DDP."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from args import ChatTrainingArguments, DataArguments, ModelArguments, parse_args
from conftest import REPO, write_jsonl

TYPES = (ModelArguments, DataArguments, ChatTrainingArguments)


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chats")
    train = [{"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
             for a in range(6) for b in range(4)]
    held_out = [{"prompt": f"What is {a} plus 9?", "completion": f"{a} plus 9 is {a + 9}."} for a in range(8)]
    return write_jsonl(folder / "train.jsonl", train), write_jsonl(folder / "validation.jsonl", held_out)


def tiny_args(tiny_model_dir, chat_files, output_dir, *extra):
    train, validation = chat_files
    return ["--model_name_or_path", str(tiny_model_dir), "--train_files", str(train),
            "--validation_files", str(validation), "--output_dir", str(output_dir), "--max_steps", "4",
            "--learning_rate", "1.0e-3", "--logging_steps", "1", "--save_strategy", "no",
            "--per_device_eval_batch_size", "4", "--disable_tqdm", "true", "--seed", "7", *map(str, extra)]


def run_main(argv):
    import train

    return train.main(*parse_args(TYPES, argv))


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_main_writes_a_complete_output_folder(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "run"
    metrics = run_main(tiny_args(tiny_model_dir, chat_files, out, "--per_device_train_batch_size", 4))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json", "recipe.yaml", "data_report.json", "trainer_state.json",
                 "all_results.json", "train_results.json", "trainer_eval_results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_loss"] == metrics["eval_loss"]
    assert results["eval_loss"] < results["base_eval_loss"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2]  # <|im_end|>
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["max_steps"] == 4 and recipe["learning_rate"] == 1.0e-3
    rerun = parse_args(TYPES, [str(out / "recipe.yaml")])  # the resolved recipe runs again as it is
    assert (rerun[0].model_name_or_path, rerun[1].train_files, rerun[2].max_steps) == (
        str(tiny_model_dir), [str(chat_files[0])], 4)
    assert json.loads((out / "data_report.json").read_text())["train"]["kept"] == 24


def test_resume_from_checkpoint_continues_where_it_stopped(tiny_model_dir, chat_files, tmp_path):
    # A constant schedule, so that a run stopped after 2 of 4 steps has seen the same learning rates.
    constant = ["--per_device_train_batch_size", 4, "--lr_scheduler_type", "constant"]
    straight = tmp_path / "straight"
    run_main(tiny_args(tiny_model_dir, chat_files, straight, *constant))
    resumed = tmp_path / "resumed"
    interrupted = tiny_args(tiny_model_dir, chat_files, resumed, *constant, "--save_strategy", "steps",
                            "--save_steps", 2)
    run_main(interrupted + ["--max_steps", "2"])
    state_file = resumed / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"].append({"step": 2, "marker": "from checkpoint-2"})  # shows the state was loaded
    state_file.write_text(json.dumps(state))
    run_main(interrupted + ["--resume_from_checkpoint", str(resumed / "checkpoint-2")])
    final_state = json.loads((resumed / "trainer_state.json").read_text())
    assert {"step": 2, "marker": "from checkpoint-2"} in final_state["log_history"]
    assert final_state["global_step"] == 4
    assert logged_losses(resumed)[-2:] == pytest.approx(logged_losses(straight)[-2:], rel=1e-5)


def test_accumulation_and_checkpointing_match_the_same_global_batch(tiny_model_dir, chat_files, tmp_path):
    whole = tmp_path / "whole"
    run_main(tiny_args(tiny_model_dir, chat_files, whole, "--per_device_train_batch_size", 4))
    accumulated = tmp_path / "accumulated"
    run_main(tiny_args(tiny_model_dir, chat_files, accumulated, "--per_device_train_batch_size", 2,
                       "--gradient_accumulation_steps", 2, "--activation_checkpointing", "true"))
    assert logged_losses(accumulated) == pytest.approx(logged_losses(whole), rel=1e-4)


def test_every_recipe_parses_into_the_argument_dataclasses():
    recipes = sorted((REPO / "recipes").glob("*/*.yaml"))
    recipes = [r for r in recipes if r.parent.name != "accelerate"]
    assert {r.parent.name for r in recipes} >= {"customer_service", "chitchat"}
    for recipe in recipes:
        model_args, data_args, training_args = parse_args(TYPES, [str(recipe)])
        assert data_args.train_files and data_args.validation_files, recipe
        assert training_args.output_dir == f"outputs/{recipe.parent.name}", recipe


def test_every_accelerate_config_loads():
    from accelerate.commands.config.config_args import ClusterConfig

    configs = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"single_gpu", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    for config in configs:
        assert ClusterConfig.from_yaml_file(str(config)).num_processes >= 1, config


def test_command_line_flags_override_the_recipe():
    recipe = str(REPO / "recipes" / "customer_service" / "sft.yaml")
    _, data_args, training_args = parse_args(TYPES, [recipe, "--learning_rate", "3.0e-4", "--max_length", "64"])
    assert (training_args.learning_rate, data_args.max_length) == (3.0e-4, 64)
    assert parse_args(TYPES, [recipe])[2].learning_rate == 1.0e-4


def run_train_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nmicro_batch_size: 4\n")
    result = run_train_cli(recipe)
    assert result.returncode == 1
    assert f"{recipe}: unknown key(s) micro_batch_size" in result.stderr


def test_unknown_flag_is_an_error_naming_it():
    result = run_train_cli("--learning_rate", "1.0e-4", "--micro_batch_size", "4")
    assert result.returncode != 0
    assert "--micro_batch_size" in result.stderr


def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, chat_files, tmp_path):
    single = tmp_path / "single"
    run_main(tiny_args(tiny_model_dir, chat_files, single, "--per_device_train_batch_size", 4))
    ddp = tmp_path / "ddp"
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py")]
    result = subprocess.run(launch + tiny_args(tiny_model_dir, chat_files, ddp, "--per_device_train_batch_size", 2),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(logged_losses(ddp)) == 4
    assert logged_losses(ddp) == pytest.approx(logged_losses(single), rel=1e-4)
    ddp_eval = json.loads((ddp / "all_results.json").read_text())["eval_loss"]
    assert ddp_eval == pytest.approx(json.loads((single / "all_results.json").read_text())["eval_loss"], rel=1e-4)
