"""Train chattune and TRL's SFTTrainer on the same workload in one run, and print what each achieved.

    pip install -r requirements-bench.txt            # TRL, for this benchmark only (make bench does it)
    python benchmarks/throughput.py                  # CPU defaults: 64 FAQ examples, batch 8, 1 epoch
    python benchmarks/throughput.py --device cuda --examples 1024 --batch_size 32 --trl_configs bf16

Both trainers get the same model, examples, global batch, learning rate, schedule and epochs. Each run is
a fresh subprocess (so peak memory is its own). Printed per run: wall time, tokens/s, supervised tokens/s,
padding share, peak memory, MFU (6 x parameters FLOPs per token against the bf16 matmul peak measured
first), train loss and the held-out response loss of the trained model. The last line is one JSON object
with `ratio` (chattune over TRL's best, supervised tokens/s) and `mfu` (chattune's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHATTUNE_CONFIGS = {"bf16": ["--bf16", "true"],
                    "bf16-sdpa": ["--bf16", "true", "--attn_implementation", "sdpa"],
                    "bf16-padded": ["--bf16", "true", "--padding_free", "false", "--attn_implementation", "sdpa"],
                    "fp32": []}
TRL_CONFIGS = {"fp32": {}, "bf16": {"bf16": True}, "bf16+packing": {"bf16": True, "packing": True},
               "fp32+packing": {"packing": True}}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: embedded SmolLM2-135M)")
    parser.add_argument("--data", default=str(REPO / "data" / "customer_service" / "train.jsonl"))
    parser.add_argument("--held_out", default=str(REPO / "data" / "customer_service" / "validation.jsonl"))
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--held_out_examples", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--chattune_configs", default="bf16,bf16-sdpa,bf16-padded",
                        help=f"of {','.join(CHATTUNE_CONFIGS)}")
    parser.add_argument("--trl_configs", default="bf16,bf16+packing", help=f"of {','.join(TRL_CONFIGS)}")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def matmul_peak(device: str) -> dict[str, float]:
    """GFLOP/s of a 2048x2048 matmul in fp32 and bf16: the ceiling MFU is measured against."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, dtype=dtype, device=device)
        b = torch.randn(2048, 2048, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        repeats = 20 if device == "cpu" else 200
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        peaks[name] = 2 * 2048 ** 3 * repeats / (time.perf_counter() - start) / 1e9
    return peaks


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def write_workload(args, workdir: Path) -> tuple[Path, Path]:
    """The first N training and held-out conversations, as message records both trainers read."""
    def head(source: str, count: int, name: str) -> Path:
        lines = Path(source).read_text(encoding="utf-8").splitlines()[:count]
        path = workdir / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    return head(args.data, args.examples, "train.jsonl"), head(args.held_out, args.held_out_examples, "held_out.jsonl")


class CountingCollator:
    """Wraps a trainer's collator to count real, padded and supervised token slots of every batch."""

    def __init__(self, collate):
        self.collate, self.slots, self.real, self.supervised = collate, 0, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.slots += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        targets = batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]
        self.supervised += int((targets != -100).sum())
        return batch


def chattune_trainer(args, flags, train_file, out):
    import train
    from args import ChatTrainingArguments, DataArguments, ModelArguments, parse_args

    argv = ["--train_files", str(train_file), "--output_dir", str(out), "--max_length", str(args.max_length),
            "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
            "--num_train_epochs", str(args.epochs), "--save_strategy", "no", "--report_to", "none",
            "--logging_steps", "1", "--disable_tqdm", "true", "--seed", "0", *flags]
    if args.model:
        argv += ["--model_name_or_path", args.model]
    model_args, data_args, training_args = parse_args((ModelArguments, DataArguments, ChatTrainingArguments), argv)
    tokenizer = train.load_tokenizer(model_args.model_name_or_path)
    dataset, _ = train.load_splits(data_args, tokenizer, training_args)
    return train.build_trainer(model_args, data_args, training_args, tokenizer, dataset), tokenizer


def trl_trainer(args, options, train_file, out):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from args import DEFAULT_MODEL
    from conversations import read_conversations
    from data_prep import load_tokenizer
    from embedded_model import resolve_model_path

    # TRL's conversational prompt-completion form, so that its completion-only loss trains the reply.
    rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in r["messages"][:-1]],
             "completion": [{"role": "assistant", "content": r["messages"][-1]["content"]}]}
            for r in read_conversations([str(train_file)])]
    model_path = resolve_model_path(args.model or DEFAULT_MODEL)
    config = SFTConfig(output_dir=str(out), max_length=args.max_length, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.learning_rate, num_train_epochs=args.epochs, save_strategy="no",
                       report_to="none", logging_steps=1, disable_tqdm=True, seed=0, completion_only_loss=True,
                       use_cpu=args.device == "cpu", **options)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    tokenizer = load_tokenizer(model_path)
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer)
    return trainer, tokenizer


def held_out_loss(model, tokenizer, held_out_file) -> float:
    """Response-only loss of the trained model, with chattune's masks, so every run is scored alike."""
    from args import DataArguments
    from evaluate_model import held_out_conversations, response_loss

    model.eval()
    items = held_out_conversations([str(held_out_file)], DataArguments(), tokenizer)
    return response_loss(model, [i["example"] for i in items], 8, tokenizer.pad_token_id)["response_loss"]


def one_run(args) -> dict:
    """Train one configuration in this process and return its figures."""
    import torch

    workdir = Path(args.workdir)
    train_file, held_out_file = workdir / "train.jsonl", workdir / "held_out.jsonl"
    system, config = args.run.split(":", 1)
    out = workdir / f"{system}-{config}"
    if system == "chattune":
        trainer, tokenizer = chattune_trainer(args, CHATTUNE_CONFIGS[config], train_file, out)
    else:
        trainer, tokenizer = trl_trainer(args, TRL_CONFIGS[config], train_file, out)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(args.device)
    start = time.perf_counter()
    result = trainer.train()
    _sync(args.device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    model = trainer.accelerator.unwrap_model(trainer.model).float()
    return {"run": args.run, "seconds": seconds, "tokens": counter.real, "slots": counter.slots,
            "supervised": counter.supervised, "steps": result.global_step, "train_loss": result.training_loss,
            "held_out_loss": held_out_loss(model.to("cpu"), tokenizer, held_out_file), "peak_bytes": peak,
            "parameters": sum(p.numel() for p in model.parameters())}


def run_subprocess(args, run: str, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--run", run, "--workdir", str(workdir), *sys.argv[1:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{run} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def figures(run: dict, peak_gflops: float) -> dict:
    flops = 6 * run["parameters"] * run["tokens"]
    return {**run, "tokens_per_s": run["tokens"] / run["seconds"],
            "supervised_per_s": run["supervised"] / run["seconds"],
            "padding_share": 1 - run["tokens"] / run["slots"],
            "mfu": flops / run["seconds"] / (peak_gflops * 1e9)}


def print_table(rows: list[dict]) -> None:
    print(f"{'run':<24}{'wall s':>8}{'tok/s':>9}{'sup tok/s':>11}{'padding':>9}{'peak MiB':>10}{'MFU':>7}"
          f"{'train loss':>12}{'held-out':>10}")
    for r in rows:
        print(f"{r['run']:<24}{r['seconds']:>8.1f}{r['tokens_per_s']:>9.1f}{r['supervised_per_s']:>11.1f}"
              f"{r['padding_share']:>9.1%}{r['peak_bytes'] / 2**20:>10.0f}{r['mfu']:>7.1%}{r['train_loss']:>12.4f}"
              f"{r['held_out_loss']:>10.4f}")


def main(args) -> dict:
    peaks = matmul_peak(args.device)
    print(f"matmul 2048x2048 on {args.device}: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"workload: {args.examples} examples, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.epochs:g} epoch(s), lr {args.learning_rate:g}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_workload(args, workdir)
        runs = [f"chattune:{c}" for c in args.chattune_configs.split(",") if c] + \
               [f"trl:{c}" for c in args.trl_configs.split(",") if c]
        rows = []
        for run in runs:
            rows.append(figures(run_subprocess(args, run, workdir), peaks["bf16"]))
            print(f"  done {run}: {rows[-1]['seconds']:.1f} s", flush=True)
    print_table(rows)
    ours = next(r for r in rows if r["run"] == f"chattune:{args.chattune_configs.split(',')[0]}")
    trl_best = max((r for r in rows if r["run"].startswith("trl:")), key=lambda r: r["supervised_per_s"], default=None)
    summary = {"ratio": ours["supervised_per_s"] / trl_best["supervised_per_s"] if trl_best else None,
               "mfu": ours["mfu"], "chattune": ours["run"], "trl_best": trl_best and trl_best["run"],
               "chattune_supervised_per_s": ours["supervised_per_s"],
               "trl_supervised_per_s": trl_best and trl_best["supervised_per_s"],
               "padding_share": ours["padding_share"], "held_out_loss": ours["held_out_loss"],
               "matmul_gflops": peaks, "device": args.device}
    for r in rows:
        if r is not ours:
            print(f"{ours['run']} / {r['run']}: {ours['supervised_per_s'] / r['supervised_per_s']:.2f}x "
                  "supervised tokens/s")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    arguments = parse()
    if arguments.run:
        print(json.dumps(one_run(arguments)))
    else:
        main(arguments)
