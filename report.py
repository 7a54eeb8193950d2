"""Write an evaluation's readable report: report.md, report.html and loss.png beside eval_results.json.

    from report import write_report
    write_report(Path("outputs/customer_service"), results)   # results as evaluate_model.py builds them
"""

from __future__ import annotations

import html
import json
from pathlib import Path

METRICS = [  # key, label, which direction is better
    ("response_loss", "Response loss (held-out, trained tokens only)", "lower"),
    ("perplexity", "Response perplexity", "lower"),
    ("chrf", "chrF (0-100)", "higher"),
    ("rougeL", "ROUGE-L F (0-1)", "higher"),
    ("stop_rate", "Stop rate (ends its turn within budget)", "higher"),
    ("mean_generated_tokens", "Mean reply length (tokens)", "closer to reference"),
    ("mean_reference_tokens", "Mean reference length (tokens)", ""),
]


def metric_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(metric, base, fine-tuned, better) for the before/after table."""
    return [(label, f"{results['base'][key]:.4g}", f"{results['fine_tuned'][key]:.4g}", better)
            for key, label, better in METRICS]


def loss_curves(trainer_state: dict) -> tuple[list, list]:
    """(train points, eval points) as (step, loss) from Trainer's log history."""
    history = trainer_state.get("log_history", [])
    return ([(e["step"], e["loss"]) for e in history if "loss" in e],
            [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e])


def plot_losses(trainer_state: dict, path: Path) -> bool:
    """Plot train and eval loss by step into a PNG; False when the log holds no losses."""
    train, held_out = loss_curves(trainer_state)
    if not train and not held_out:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for points, label, style in ((train, "train loss", "-"), (held_out, "held-out loss", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (trained tokens)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _context_text(context: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in context)


def markdown_report(results: dict, has_plot: bool, samples: int) -> str:
    lines = [f"# Evaluation of {results['model_dir']}", "",
             f"Base model: `{results['base_model']}`. Held-out files: {', '.join(results['eval_files'])}. "
             f"Loss over {results['conversations']} conversations; generation (greedy, at most "
             f"{results['max_new_tokens']} new tokens) over {results['generated']}.", "",
             "## Before and after", "", "| Metric | Base | Fine-tuned | Better |", "|---|---|---|---|"]
    lines += [f"| {label} | {base} | {tuned} | {better} |" for label, base, tuned, better in metric_rows(results)]
    lines += ["", "## Loss by step", ""]
    lines += ["![train and held-out loss](loss.png)"] if has_plot else ["(no trainer_state.json in this folder)"]
    lines += ["", "## Samples", ""]
    for n, sample in enumerate(results["samples"][:samples], start=1):
        lines += [f"### Sample {n}", "", "**Context**", "", "```", _context_text(sample["context"]), "```", ""]
        for title, key in (("Reference", "reference"), ("Base", "base"), ("Fine-tuned", "fine_tuned")):
            lines += [f"**{title}**", "", "\n".join(f"> {line}" for line in sample[key].splitlines() or [""]), ""]
    return "\n".join(lines) + "\n"


def html_report(results: dict, has_plot: bool, samples: int) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(label)}</td><td>{e(base)}</td><td>{e(tuned)}</td><td>{e(better)}</td></tr>"
                   for label, base, tuned, better in metric_rows(results))
    cards = "".join(
        f"<h3>Sample {n}</h3><pre>{e(_context_text(s['context']))}</pre><table><tr><th>Reference</th><th>Base</th>"
        f"<th>Fine-tuned</th></tr><tr><td>{e(s['reference'])}</td><td>{e(s['base'])}</td>"
        f"<td>{e(s['fine_tuned'])}</td></tr></table>"
        for n, s in enumerate(results["samples"][:samples], start=1))
    plot = '<img src="loss.png" alt="train and held-out loss">' if has_plot else "<p>(no trainer_state.json)</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:auto} td,th{border:1px solid #ccc;padding:.3em;"
            "vertical-align:top} table{border-collapse:collapse} pre{white-space:pre-wrap;background:#f4f4f4}"
            f"</style></head><body><h1>Evaluation of {e(results['model_dir'])}</h1>"
            f"<p>Base model: <code>{e(results['base_model'])}</code>. Held-out files: "
            f"{e(', '.join(results['eval_files']))}.</p><h2>Before and after</h2><table><tr><th>Metric</th>"
            f"<th>Base</th><th>Fine-tuned</th><th>Better</th></tr>{rows}</table><h2>Loss by step</h2>{plot}"
            f"<h2>Samples</h2>{cards}</body></html>\n")


def write_report(model_dir: Path, results: dict, samples: int = 5) -> None:
    """report.md, report.html and (when the folder has a trainer state) loss.png."""
    state_file = model_dir / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    has_plot = plot_losses(state, model_dir / "loss.png")
    (model_dir / "report.md").write_text(markdown_report(results, has_plot, samples))
    (model_dir / "report.html").write_text(html_report(results, has_plot, samples))
