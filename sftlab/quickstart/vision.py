"""``sftlab quickstart --vision``: LLaVA-style visual instruction tuning, before and after.

A small picture of the LLaVA recipe (Liu et al. 2023) on a laptop CPU, with nothing
downloaded: the images are generated (``sftlab.data.visual_tasks``: coloured shapes, one
exact answer per question), the vision tower is a small random CLIP vision model (frozen;
on these images its patch features keep colour, place and outline), the LM is the
quickstart's (SmolLM2-135M-Instruct by default). Six stages, one run directory:

1. data: training items (shape, colour, count, position questions; training templates and
   colour-shape pairs), captions for stage 1, and three held-out evaluation splits:
   ``heldout_image`` (training templates and pairs, images never drawn in training),
   ``heldout_template`` (a question template never asked) and ``heldout_combination``
   (colour-shape pairs never drawn), each written as PNGs + LLaVA JSON, and as VQA JSONL
   for ``sftlab eval --tasks vqa=FILE``;
2. before: the LM with the tower and a freshly initialised projector (what stage 1 starts
   from) answers every held-out question (``sftlab.eval`` with the ``vqa`` task);
3. stage 1 (alignment): only the projector trains, on captions, through ``sftlab train``
   (``objective: vision``, ``vision.stage: 1``; its YAML is saved beside);
4. stage 2 (visual instruction tuning): the projector and a LoRA adapter on the LM train on
   the questions, starting from stage 1's projector;
5. after: the tuned model answers the same questions;
6. report: ``summary.json`` (exact match after the VQA normalisation, per split and per
   question type, before and after, with bootstrap 95% intervals, and the stage times) and
   ``report.html`` (the tables, the loss curves, example images with the answers).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from sftlab.config import load_config
from sftlab.data.visual_tasks import generate_visual_tasks, write_visual_tasks
from sftlab.eval.metrics import bootstrap_ci
from sftlab.eval.runner import EvalConfig, evaluate
from sftlab.infer.vision import VisionGenerator
from sftlab.models import load_model, load_tokenizer, resolve_model
from sftlab.models.vision import build_vision_model, tiny_vision_tower
from sftlab.quickstart.config import QuickstartConfig
from sftlab.quickstart.pipeline import QuickstartResult, _write_json, open_run_dir
from sftlab.quickstart.pipeline import _stage as pipeline_stage
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train

STAGES = 6
SPLITS = ("heldout_image", "heldout_template", "heldout_combination")
QUESTION_TYPES = ("shape", "colour", "count", "position")
TOWER = dict(image_size=32, patch_size=8, hidden_size=64, layers=2)
"""The random CLIP vision tower: 32x32 images in 8x8 patches, 16 image tokens each."""
TRAIN_SCALE, CAPTION_SCALE = 3, 4
"""Training questions per question type = ``TRAIN_SCALE x train_per_task`` (768 in all by
default); captions = ``CAPTION_SCALE x train_per_task`` (256): one image question is a
short example (~60 tokens), so the vision run affords more of them than the text one."""


def run_vision_quickstart(config: QuickstartConfig) -> QuickstartResult:
    """The six stages (see the module docstring); returns the run directory, summary and report."""
    run_dir = open_run_dir(config, "quickstart-vision")
    timings: dict[str, float] = {}

    with _stage(1, "generating the visual instruction data", timings, "data"):
        files = build_data(config, run_dir / "data")
        tower_dir = run_dir / "tower"
        tiny_vision_tower("clip", seed=config.seed, **TOWER).save_pretrained(str(tower_dir))
    with _stage(2, f"evaluating the untrained model ({config.model} + tower + new projector)", timings, "before"):
        model_path = resolve_model(config.model)
        language_model, tokenizer = load_model(model_path), load_tokenizer(model_path)
        base = build_vision_model(language_model, tokenizer, tiny_vision_tower("clip", seed=config.seed, **TOWER),
                                  seed=config.seed)
        before = evaluate_splits(VisionGenerator(base, tokenizer, batch_size=config.eval_batch_size,
                                                 name=f"{config.model} (untrained projector)"),
                                 files, config, run_dir / "eval" / "before")
        del base, language_model
    with _stage(3, "stage 1: aligning the projector on captions through `sftlab train`", timings, "stage1"):
        stage1 = _train(run_dir, "stage1", {
            "model": {"name": model_path}, "objective": "vision",
            "vision": {"tower": str(tower_dir), "stage": 1},
            "data": {"paths": [str(files["captions"])], "max_length": config.max_length},
            "method": {"name": "full"},
            "optim": {"name": "adamw", "lr": config.lr, "schedule": "constant", "warmup_ratio": 0.0}}, config)
    with _stage(4, "stage 2: projector + LoRA on the questions through `sftlab train`", timings, "stage2"):
        stage1_model = str(stage1.saved_to)
        stage2 = _train(run_dir, "stage2", {
            "model": {"name": stage1_model}, "objective": "vision",
            "vision": {"tower": str(tower_dir), "stage": 2, "init_from": stage1_model},
            "data": {"paths": [str(files["train"])], "max_length": config.max_length},
            "method": {"name": "lora", "lora": {"rank": config.lora_rank, "alpha": 2 * config.lora_rank}},
            "optim": {"name": "adamw", "lr": config.lr, "schedule": "cosine", "warmup_ratio": 0.1}}, config)
    with _stage(5, "evaluating the tuned model on the same questions", timings, "after"):
        tuned = VisionGenerator.from_name(stage2.saved_to, batch_size=config.eval_batch_size)
        after = evaluate_splits(tuned, files, config, run_dir / "eval" / "after")
    with _stage(6, "writing the report", timings, "report"):
        summary = summarize(before, after, config, timings)
        summary["train"] = {name: {"steps": r.steps, "final_loss": r.final_loss, "run": str(r.output_dir)}
                            for name, r in (("stage1", stage1), ("stage2", stage2))}
        _write_json(run_dir / "summary.json", summary)
        report = write_report(run_dir, summary, before, after)
    _write_json(run_dir / "summary.json", summary)  # again, with the report stage's time
    print_summary(summary, report)
    return QuickstartResult(run_dir, summary, report)


def _stage(index: int, what: str, timings: dict, key: str):
    return pipeline_stage(index, what, timings, key, total=STAGES)


# -- data ---------------------------------------------------------------------------------------

def build_data(config: QuickstartConfig, directory: Path) -> dict[str, Path]:
    """Write the questions (``tasks/``: train + the three held-out splits, LLaVA JSON and
    VQA JSONL) and the captions (``captions/train.json``); returns their paths."""
    n_train = len(QUESTION_TYPES) * TRAIN_SCALE * config.train_per_task
    n_eval = len(QUESTION_TYPES) * config.eval_per_task
    items = generate_visual_tasks(n_train, n_eval, seed=config.seed, jitter=True, heldout_image=True)
    written = write_visual_tasks(directory / "tasks", items)
    captions = generate_visual_tasks(CAPTION_SCALE * config.train_per_task, 0, seed=config.seed + 1,
                                     tasks=("caption",), jitter=True)
    files = {"train": written["train"], "captions": write_visual_tasks(directory / "captions", captions)["train"]}
    for split in SPLITS:
        rows = [{"id": f"{split}-{i}", "image": f"images/{split}-{i}.png", "question": item.question,
                 "answers": [item.answer], "task": item.task} for i, item in enumerate(items[split])]
        files[split] = directory / "tasks" / f"{split}.vqa.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"      {n_train} training questions, {len(captions['train'])} captions, "
          f"{n_eval} questions in each of {', '.join(SPLITS)}")
    return files


def _train(run_dir: Path, name: str, settings: dict, config: QuickstartConfig):
    """Write the YAML a user would write for one stage, then run it through `sftlab train`."""
    settings = {**settings, "batch_size": config.batch_size, "epochs": config.epochs,
                "max_steps": 3 if config.fast else 0, "seed": config.seed, "threads": config.threads,
                "output_dir": str(run_dir / name)}
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    print(f"      config: {path}  (rerun it with: sftlab train {path})")
    return train(load_config(TrainConfig, path))


# -- evaluation ---------------------------------------------------------------------------------

def evaluate_splits(generator, files: dict[str, Path], config: QuickstartConfig, out: Path) -> dict[str, dict]:
    """``sftlab eval``'s ``vqa`` task on every held-out split: ``{split: {"metrics", "samples"}}``
    (each split's results.json and samples.jsonl under ``out/<split>``)."""
    results = {}
    for split in SPLITS:
        eval_config = EvalConfig(model=generator.name, tasks=[f"vqa={files[split]}"], output_dir=str(out / split),
                                 batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                                 seed=config.seed)
        metrics = evaluate(eval_config, generator=generator, tokenizer=generator.tokenizer,
                           progress=False)["tasks"]["vqa"]["metrics"]
        samples = [json.loads(line) for line in (out / split / "samples.jsonl").read_text().splitlines()]
        rows = {json.loads(line)["id"]: json.loads(line) for line in files[split].read_text().splitlines()}
        for sample in samples:
            row = rows[sample["id"]]
            sample.update(question_type=row["task"], image=row["image"], question=row["question"])
        results[split] = {"metrics": metrics, "samples": samples}
        print(f"      {split}: exact match {100 * metrics['exact_match']['mean']:.1f}% (n={metrics['exact_match']['n']})")
    return results


def summarize(before: dict, after: dict, config: QuickstartConfig, timings: dict) -> dict:
    """Exact match before and after per split (the eval runner's intervals) and per question
    type over all splits (bootstrap, the same function); ``improved``: intervals disjoint."""
    def pair(b: dict, a: dict) -> dict:
        return {"before": b, "after": a, "improved": a["low"] > b["high"]}

    def pooled(results: dict, question_type: str) -> dict:
        scores = [s["scores"]["exact_match"] for split in SPLITS for s in results[split]["samples"]
                  if s["question_type"] == question_type]
        return bootstrap_ci(scores, seed=config.seed)

    splits = {split: pair(before[split]["metrics"]["exact_match"], after[split]["metrics"]["exact_match"])
              for split in SPLITS}
    types = {t: pair(pooled(before, t), pooled(after, t)) for t in QUESTION_TYPES}
    return {"model": config.model, "metric": "exact match (VQA answer normalisation)", "splits": splits,
            "question_types": types, "tower": {"kind": "clip (random, frozen)", **TOWER}, "timings_s": timings}


def print_summary(summary: dict, report: Path) -> None:
    print("\nexact match on held-out questions (95% interval):")
    for split, row in summary["splits"].items():
        b, a = row["before"], row["after"]
        print(f"  {split:22s} before {100 * b['mean']:5.1f}% [{100 * b['low']:.0f}-{100 * b['high']:.0f}]"
              f"   after {100 * a['mean']:5.1f}% [{100 * a['low']:.0f}-{100 * a['high']:.0f}]   (n={b['n']})")
    print(f"\nreport: {report}")


# -- report -------------------------------------------------------------------------------------

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.up{color:#11772d;font-weight:600}img{max-width:100%}
img.scene{image-rendering:pixelated;width:96px;height:96px;border:1px solid #ccc}"""


def write_report(run_dir: Path, summary: dict, before: dict, after: dict, per_split: int = 4) -> Path:
    """``report.html``: one self-contained page (images embedded), in the quickstart report's style."""
    sections = [
        f"<h1>sftlab quickstart --vision: {html.escape(summary['model'])}</h1>"
        "<p>LLaVA-style visual instruction tuning on generated images: a frozen random CLIP vision tower, "
        "an MLP projector aligned on captions (stage 1), then the projector and a LoRA adapter on the "
        "questions (stage 2). Evaluation on held-out images, a held-out question template and held-out "
        "colour-shape pairs. Metric: exact match after the VQA answer normalisation (95% bootstrap "
        f"intervals).</p><p>Stage times (s): {html.escape(json.dumps(summary['timings_s']))}</p>",
        _table("Before and after, per held-out split", "split", summary["splits"]),
        _table("Per question type (all splits)", "question type", summary["question_types"]),
        _losses(run_dir),
        _examples(run_dir, before, after, per_split),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sftlab quickstart --vision</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _pct(block: dict) -> str:
    return f"{100 * block['mean']:.1f}% <small>[{100 * block['low']:.0f}–{100 * block['high']:.0f}]</small>"


def _table(title: str, label: str, rows: dict) -> str:
    body = "".join(f"<tr><td>{html.escape(key)}</td><td>{row['before']['n']}</td><td>{_pct(row['before'])}</td>"
                   f"<td>{_pct(row['after'])}</td><td class='{'up' if row['improved'] else ''}'>"
                   f"{'yes' if row['improved'] else 'no'}</td></tr>" for key, row in rows.items())
    return (f"<h2>{html.escape(title)}</h2><table><tr><th>{label}</th><th>n</th><th>before</th><th>after</th>"
            f"<th>clear gain (intervals apart)</th></tr>{body}</table>")


def _losses(run_dir: Path) -> str:
    parts = ["<h2>Training loss</h2>"]
    for stage in ("stage1", "stage2"):
        png = run_dir / stage / "loss.png"  # written by `sftlab train` itself
        parts.append(f"<h3>{stage}</h3>" + (f"<img src='data:image/png;base64,{_b64(png.read_bytes())}' "
                                             f"alt='{stage} loss'>" if png.exists() else "<p>(no loss curve)</p>"))
    return "".join(parts)


def _examples(run_dir: Path, before: dict, after: dict, per_split: int) -> str:
    out = ["<h2>Examples</h2>"]
    for split in SPLITS:
        pairs = list(zip(before[split]["samples"], after[split]["samples"]))
        step = max(1, len(pairs) // per_split)
        cells = "".join(
            f"<tr><td><img class='scene' src='data:image/png;base64,{_image_b64(run_dir, b['image'])}' "
            f"alt='{html.escape(b['id'])}'></td><td>{html.escape(b['question_type'])}</td>"
            f"<td>{html.escape(b['question'])}</td><td>{html.escape(str(b['target']))}</td>"
            f"<td>{html.escape(b['output'])}</td><td>{html.escape(a['output'])}"
            f"{' ✓' if a['scores']['exact_match'] else ''}</td></tr>" for b, a in pairs[::step][:per_split])
        out.append(f"<h3>{split}</h3><table><tr><th>image</th><th>type</th><th>question</th><th>answer</th>"
                   f"<th>before</th><th>after</th></tr>{cells}</table>")
    return "".join(out)


def _image_b64(run_dir: Path, relative: str) -> str:
    return _b64((run_dir / "data" / "tasks" / relative).read_bytes())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

