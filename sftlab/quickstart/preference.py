"""``sftlab quickstart --objective dpo|grpo|ppo``: the preference and RL objectives, shown on
the quickstart's exactly-checkable tasks.

The same data as the SFT quickstart (``sftlab.quickstart.data``: seen tasks through their
training templates; evaluation on held-out templates and unseen tasks), the same model
(SmolLM2-135M-Instruct by default), LoRA, and every training run through ``sftlab train``'s
one loop (``sftlab.train.sft.train`` on a ``TrainConfig`` read from a YAML file saved in
the run directory). Three demonstrations, one run directory each:

- ``dpo``: preference pairs from the training instances: chosen = the gold short answer,
  rejected = the untuned model's own greedy answer where it is wrong (mostly verbose), and
  where it is right another training instance's answer of the same task (short, wrong:
  ``rejected_source`` says which, per pair). ``objective: dpo`` on them; held-out exact
  match and mean answer length (tokens) before and after, with bootstrap intervals.
- ``grpo``: prompt rows (``messages`` + ``answer``) of the training instances, GRPO's
  ``exact_match`` reward plus 0.5 for a short one-line answer (``format``; ``SETTINGS``
  says why); the per-step reward curve (``reward_curve.png``) and held-out exact match
  before and after.
- ``ppo``: a Bradley-Terry reward model (``objective: reward``) on the DPO pairs, its
  accuracy on held-out pairs, then PPO against it (``ppo.reward_model``) on the prompts:
  the reward and KL curves (``reward_curve.png``), held-out exact match before and after.

Every run directory gets the train YAML(s), each run's ``metrics.jsonl`` (in its
subdirectory), ``summary.json`` (every figure with its interval and ``n``), the plots and
``report.html``. The base model's answers (on the held-out items and on the training
prompts) are cached as in the SFT quickstart, so a second run skips them.
"""
from __future__ import annotations

import base64
import html
import json
import random
from collections import Counter
from pathlib import Path

import yaml

from sftlab.config import load_config
from sftlab.data.io import read_rows
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.eval.metrics import bootstrap_ci
from sftlab.quickstart import data as qdata
from sftlab.quickstart import pipeline
from sftlab.quickstart.config import QuickstartConfig
from sftlab.quickstart.data import GROUPS, EvalItem
from sftlab.quickstart.pipeline import QuickstartResult, _write_json, _write_jsonl
from sftlab.quickstart.report import sample_outputs
from sftlab.quickstart.tasks import exact_match, normalize_answer
from sftlab.report.charts import png, pyplot
from sftlab.train.config import TrainConfig
from sftlab.train.objectives.reward import load_reward_model
from sftlab.train.sft import train
from sftlab.types import Message

OBJECTIVES = ("dpo", "grpo", "ppo")
PROMPT_SCALE = 8
"""Training prompts per seen task = ``train_per_task // PROMPT_SCALE`` (8 by default, 96 in
all): each costs a generation of the base model and a pair of sequences to train on (DPO,
reward), so these runs use far fewer than the SFT quickstart's 768 conversations: on two
CPU cores the 135M model trains at roughly 100 tokens a second."""
GRPO_STEPS, PPO_STEPS = 20, 24
"""Optimizer steps of the GRPO and PPO runs (``--fast``: 3 and 4)."""
ROLLOUT_TOKENS = 20
"""Length limit of the GRPO and PPO rollouts (at most ``max_new_tokens``): every gold answer
fits in it (the longest, a sorted list of five numbers, is 18 tokens with SmolLM2's tokenizer),
and a completion that does not stop by then is wrong anyway."""
REWARD_HELD_OUT = 0.25
"""Share of the pairs held out to measure the reward model's pair accuracy."""
SETTINGS = {
    "dpo": {"beta": 0.1, "lr_scale": 0.3},
    "grpo": {"num_generations": 4, "batch_size": 4, "temperature": 0.7, "lr_scale": 1.0,
             "rewards": ["exact_match", "format"], "reward_weights": [1.0, 0.5],
             "format_pattern": r"\s*[^\n]{1,40}\s*$"},
    "ppo": {"batch_size": 8, "epochs": 2, "kl_coef": 0.05, "temperature": 0.7, "lr_scale": 0.2},
}
"""The objectives' settings here (the rest are ``sftlab train``'s defaults); ``lr_scale``
multiplies the quickstart's ``lr``. DPO at the quickstart's 1e-3 collapses (the margin
passes 100 within a dozen steps, the chosen answers' likelihood falls with the rejected ones
and the model writes gibberish: 0% exact match after); 1e-4 and 3e-4 both shorten the
answers without harm (measured: 17.2 -> 10.3 and -> 5.7 tokens on the held-out items).
GRPO's reward is exact match plus half a point for a
short one-line answer (``format``: at most 40 characters, one line): the untuned model
answers none of the training prompts exactly (0 of 96 greedy answers; none of 160 samples in
10 steps at temperature 0.7), so exact match alone gives every group the same reward and
GRPO no gradient; the format term rewards the brevity that exact answers need."""


def run_preference_quickstart(config: QuickstartConfig) -> QuickstartResult:
    """The demonstration of ``config.objective`` (``dpo``, ``grpo`` or ``ppo``)."""
    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective {config.objective!r}: this quickstart runs {', '.join(OBJECTIVES)}")
    run_dir = pipeline.open_run_dir(config, f"quickstart-{config.objective}")
    demo = Demo(config, run_dir)
    summary = {"dpo": demo.dpo, "grpo": demo.grpo, "ppo": demo.ppo}[config.objective]()
    _write_json(run_dir / "summary.json", summary)  # again, with the report stage's time
    report = run_dir / "report.html"
    print_summary(summary, report)
    return QuickstartResult(run_dir, summary, report)


class Demo:
    """The stages the three demonstrations share, and the three themselves."""

    def __init__(self, config: QuickstartConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self.timings: dict[str, float] = {}
        self.stages, self.index = {"dpo": 6, "grpo": 5, "ppo": 7}[config.objective], 0
        self.pairs: list[dict] = []
        self.before: list[dict] = []
        self.after: list[dict] = []
        self.curves: dict[str, bytes] = {}

    # -- the demonstrations -------------------------------------------------------------

    def dpo(self) -> dict:
        self.common_start()
        with self.stage("the base model's own answers to the training prompts -> preference pairs", "pairs"):
            self.make_pairs()
        with self.stage("DPO (LoRA) on the pairs through `sftlab train`", "train"):
            settings = SETTINGS["dpo"]
            result = self.train("train", {
                "objective": "dpo", "dpo": {"beta": settings["beta"]},
                "data": {"paths": [str(self.run_dir / "data" / "pairs.jsonl")], "max_length": self.config.max_length},
                "lr": self.config.lr * settings["lr_scale"], "batch_size": self.config.batch_size,
                "epochs": self.config.epochs, "max_steps": 3 if self.config.fast else 0})
        self.after_eval(result.saved_to)
        with self.stage("writing the report", "report"):
            rows = metric_rows(result.output_dir)
            self.curves["dpo_curve.png"] = curve_png(rows, ("loss", "margin", "accuracy"), "DPO training")
            summary = self.summary()
            summary["train"] = train_block(result, rows, ("margin", "accuracy", "reward_chosen", "reward_rejected"))
            return self.finish(summary)

    def grpo(self) -> dict:
        self.common_start()
        settings = SETTINGS["grpo"]
        steps = 3 if self.config.fast else GRPO_STEPS
        with self.stage("GRPO (LoRA, exact-match + format reward) through `sftlab train`", "train"):
            prompts = self.prompt_rows(steps * settings["batch_size"])
            result = self.train("train", {
                "objective": "grpo",
                "grpo": {"num_generations": settings["num_generations"],
                         "max_new_tokens": min(ROLLOUT_TOKENS, self.config.max_new_tokens),
                         "temperature": settings["temperature"], "rewards": settings["rewards"],
                         "reward_weights": settings["reward_weights"], "format_pattern": settings["format_pattern"],
                         "beta": 0.0},
                "data": {"paths": [str(prompts)], "max_length": self.config.max_length},
                "lr": self.config.lr * settings["lr_scale"], "batch_size": settings["batch_size"], "max_steps": steps})
        self.after_eval(result.saved_to)
        with self.stage("writing the report", "report"):
            rows = metric_rows(result.output_dir)
            self.curves["reward_curve.png"] = curve_png(rows, ("reward", "completion_tokens"),
                                                        "GRPO: reward (exact match + 0.5 for a short one-line answer)")
            summary = self.summary()
            summary["train"] = train_block(result, rows, ("reward", "reward_std", "completion_tokens"))
            summary["reward_curve"] = curve_summary(rows, "reward", self.config.seed)
            return self.finish(summary)

    def ppo(self) -> dict:
        self.common_start()
        with self.stage("the base model's own answers to the training prompts -> preference pairs", "pairs"):
            self.make_pairs()
        with self.stage("a reward model (LoRA + scalar head) on the pairs through `sftlab train`", "reward"):
            reward_result, pair_accuracy = self.train_reward_model()
        settings = SETTINGS["ppo"]
        steps = 4 if self.config.fast else PPO_STEPS
        with self.stage("PPO (LoRA) against the reward model through `sftlab train`", "train"):
            rollouts = steps // settings["epochs"]
            prompts = self.prompt_rows(rollouts * settings["batch_size"] * settings["epochs"])
            result = self.train("train", {
                "objective": "ppo",
                "ppo": {"reward_model": str(reward_result.output_dir),
                        "max_new_tokens": min(ROLLOUT_TOKENS, self.config.max_new_tokens),
                        "temperature": settings["temperature"], "epochs": settings["epochs"],
                        "kl_coef": settings["kl_coef"]},
                "data": {"paths": [str(prompts)], "max_length": self.config.max_length},
                "lr": self.config.lr * settings["lr_scale"], "batch_size": settings["batch_size"], "max_steps": steps})
        self.after_eval(result.saved_to)
        with self.stage("writing the report", "report"):
            rows = metric_rows(result.output_dir)
            self.curves["reward_curve.png"] = curve_png(rows, ("reward", "kl", "completion_length"),
                                                        "PPO: reward-model score and KL to the initial model")
            reward_rows = metric_rows(reward_result.output_dir)
            self.curves["reward_model_curve.png"] = curve_png(reward_rows, ("loss", "accuracy"),
                                                              "reward model training")
            summary = self.summary()
            summary["reward_model"] = {**train_block(reward_result, reward_rows, ("margin", "accuracy")),
                                       "heldout_pair_accuracy": pair_accuracy,
                                       "eval_accuracy_logged": _last(reward_rows, "eval_accuracy")}
            summary["train"] = train_block(result, rows, ("reward", "kl", "approx_kl", "completion_length"))
            summary["reward_curve"] = curve_summary(rows, "reward", self.config.seed)
            summary["kl"] = {**curve_summary(rows, "kl", self.config.seed),
                             "what": "mean over a rollout's completions of the summed per-token "
                                     "log pi_old - log pi_ref (metrics.jsonl `kl`)"}
            return self.finish(summary)

    # -- shared stages ------------------------------------------------------------------

    def stage(self, what: str, key: str):
        self.index += 1
        return pipeline._stage(self.index, what, self.timings, key, total=self.stages)

    def common_start(self) -> None:
        config = self.config
        with self.stage("building the task data from templates", "data"):
            self.built = pipeline._cached_data(config)
            qdata.save(self.built, self.run_dir / "data")
            self.items = training_items(self.built, max(1, config.train_per_task // PROMPT_SCALE))
            print(f"      {len(self.items)} training prompts, {len(self.built.eval)} held-out eval items")
        with self.stage(f"evaluating the base model ({config.model}) on held-out items", "before"):
            self.model_path = pipeline._resolve(config.model)
            self.before = cached_answers(config, self.model_path, self.built.eval, "eval-before")
            _write_jsonl(self.run_dir / "eval_before.jsonl", self.before)

    def after_eval(self, adapter) -> None:
        with self.stage("evaluating the tuned model on the same items", "after"):
            self.after = evaluate(self.model_path, self.built.eval, self.config, adapter=adapter)
            _write_jsonl(self.run_dir / "eval_after.jsonl", self.after)

    def make_pairs(self) -> None:
        answers = cached_answers(self.config, self.model_path, self.items, "train-answers")
        _write_jsonl(self.run_dir / "data" / "train_answers.jsonl", answers)
        self.pairs = build_pairs(answers)
        _write_jsonl(self.run_dir / "data" / "pairs.jsonl", self.pairs)
        sources = Counter(p["meta"]["rejected_source"] for p in self.pairs)
        print(f"      {len(self.pairs)} pairs; rejected: {sources['model']} the model's own wrong answer, "
              f"{sources['other_instance']} another instance's answer (the model was right)")

    def prompt_rows(self, count: int) -> Path:
        """``count`` prompt rows (``messages`` + ``answer``; the training prompts, cycled)."""
        rows = [{"id": item.id, "messages": [{"role": "user", "content": item.prompt}], "answer": item.answer}
                for item in self.items]
        rows = [rows[i % len(rows)] for i in range(max(count, 1))]
        path = self.run_dir / "data" / "prompts.jsonl"
        _write_jsonl(path, rows)
        return path

    def train_reward_model(self):
        """``objective: reward`` on the pairs, ``REWARD_HELD_OUT`` of them held out (by task
        instance, seeded); returns the result and the held-out pair accuracy, scored again here
        through ``load_reward_model`` so each pair's ranking gives a bootstrap interval."""
        order = list(range(len(self.pairs)))
        random.Random(self.config.seed).shuffle(order)
        held = max(1, round(REWARD_HELD_OUT * len(order)))
        eval_pairs = [self.pairs[i] for i in sorted(order[:held])]
        train_pairs = [self.pairs[i] for i in sorted(order[held:])] or eval_pairs
        _write_jsonl(self.run_dir / "data" / "reward_train.jsonl", train_pairs)
        _write_jsonl(self.run_dir / "data" / "reward_eval.jsonl", eval_pairs)
        result = self.train("reward", {
            "objective": "reward",
            "data": {"paths": [str(self.run_dir / "data" / "reward_train.jsonl")],
                     "eval_path": str(self.run_dir / "data" / "reward_eval.jsonl"),
                     "max_length": self.config.max_length},
            "lr": self.config.lr, "batch_size": self.config.batch_size, "epochs": self.config.epochs,
            "max_steps": 3 if self.config.fast else 0})
        scorer = load_reward_model(result.output_dir, max_length=self.config.max_length)
        conversations = [[*pair["prompt"], *pair[side]] for pair in eval_pairs for side in ("chosen", "rejected")]
        scores = scorer.score(conversations)
        right = [float(scores[2 * i] > scores[2 * i + 1]) for i in range(len(eval_pairs))]
        for pair, score_chosen, score_rejected in zip(eval_pairs, scores[::2], scores[1::2]):
            pair["scores"] = {"chosen": score_chosen, "rejected": score_rejected}
        _write_jsonl(self.run_dir / "reward" / "heldout_scores.jsonl", eval_pairs)
        accuracy = bootstrap_ci(right, seed=self.config.seed)
        print(f"      held-out pair accuracy {100 * accuracy['mean']:.1f}% "
              f"[{100 * accuracy['low']:.0f}-{100 * accuracy['high']:.0f}] (n={accuracy['n']})")
        del scorer
        return result, accuracy

    def train(self, name: str, settings: dict):
        """Write the YAML a user would write (``name.yaml``), then run it through `sftlab train`."""
        config = self.config
        lr = settings.pop("lr")
        train_yaml = {
            "model": {"name": self.model_path}, **settings,
            "method": {"name": "lora", "lora": {"rank": config.lora_rank, "alpha": 2 * config.lora_rank}},
            "optim": {"name": "adamw", "lr": lr, "schedule": "cosine", "warmup_ratio": 0.1},
            "seed": config.seed, "threads": config.threads, "output_dir": str(self.run_dir / name),
        }
        path = self.run_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(train_yaml, sort_keys=False))
        print(f"      config: {path}  (rerun it with: sftlab train {path})")
        return train(load_config(TrainConfig, path))

    def finish(self, summary: dict) -> dict:
        _write_json(self.run_dir / "summary.json", summary)
        write_report(self.run_dir, summary, self)
        return summary

    def summary(self) -> dict:
        """Exact match and answer length before and after, overall and per group."""
        config = self.config
        seed = config.seed

        def block(metric: str, group: str | None, better: str) -> dict:
            pick = (lambda rows: [r[metric] for r in rows if group is None or r["group"] == group])
            b, a = bootstrap_ci(pick(self.before), seed=seed), bootstrap_ci(pick(self.after), seed=seed)
            changed = a["low"] > b["high"] if better == "higher" else a["high"] < b["low"]
            return {"before": b, "after": a, "clear_change": changed}

        groups = ("all",) + GROUPS
        summary = {
            "objective": config.objective, "model": config.model,
            "exact_match": {g: block("correct", None if g == "all" else g, "higher") for g in groups},
            "answer_tokens": {g: block("tokens", None if g == "all" else g, "lower") for g in groups},
            "eval": {"n": len(self.before), "max_new_tokens": config.max_new_tokens,
                     "items": "held-out instances: seen tasks through held-out templates, and unseen tasks"},
            "timings_s": self.timings,
        }
        if self.pairs:
            sources = Counter(p["meta"]["rejected_source"] for p in self.pairs)
            base_right = [float(p["meta"]["rejected_source"] == "other_instance") for p in self.pairs]
            summary["pairs"] = {
                "n": len(self.pairs), "rejected_source": dict(sources),
                "base_exact_match_on_training_prompts": bootstrap_ci(base_right, seed=seed),
                "chosen": "the gold answer",
                "rejected": "the untuned model's greedy answer where wrong; where right, another training "
                            "instance's answer of the same task (different from the gold)"}
        return summary


# -- data -----------------------------------------------------------------------------------

def training_items(built: qdata.QuickstartData, per_task: int) -> list[EvalItem]:
    """The first ``per_task`` training conversations of every seen task (in the built data's
    seeded order), as items: prompt = the user turn, answer = the gold assistant turn."""
    counts: Counter = Counter()
    items = []
    for conversation in built.train:
        task = conversation.meta["task"]
        if counts[task] < per_task:
            counts[task] += 1
            items.append(EvalItem(id=conversation.id, task=task, group="train",
                                  template=conversation.meta["template"],
                                  prompt=conversation.messages[0].content,
                                  answer=conversation.messages[-1].content))
    return items


def cached_answers(config: QuickstartConfig, model_path: str, items: list[EvalItem], name: str) -> list[dict]:
    """The base model's greedy answers to ``items`` (``evaluate``), cached by model, items
    and decoding settings as the SFT quickstart caches its "before" answers (``name``: the
    cache file's prefix)."""
    key = pipeline._key(pipeline._model_fingerprint(model_path), [i.__dict__ for i in items], config.max_new_tokens)
    cached = pipeline._cache_dir() / f"{name}-{key}.jsonl"
    if cached.exists():
        print(f"      reusing the base model's answers from {cached}")
        return read_rows(cached)
    rows = evaluate(model_path, items, config)
    _write_jsonl(cached, rows)
    return rows


def evaluate(model_path: str, items: list[EvalItem], config: QuickstartConfig, adapter=None) -> list[dict]:
    """``pipeline.evaluate``'s rows (greedy answers, ``correct``: exact match, ``contains``)
    plus ``tokens``, the generated length (the end-of-turn token included; at most
    ``max_new_tokens``) and ``finish_reason`` (``stop`` or ``length``)."""
    generator = HFGenerator.from_name(model_path, adapter=adapter, batch_size=config.eval_batch_size)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=0.0)
    prompts = [[Message("user", item.prompt)] for item in items]
    outputs = []
    for start in pipeline._progress(range(0, len(prompts), config.eval_batch_size), len(prompts),
                                    config.eval_batch_size):
        outputs += generator.generate(prompts[start:start + config.eval_batch_size], sampling)
    return [{**item.__dict__, "response": out.text, "correct": float(exact_match(out.text, item.answer)),
             "contains": float(normalize_answer(item.answer).lower() in normalize_answer(out.text).lower()),
             "tokens": out.completion_tokens, "finish_reason": out.finish_reason}
            for item, out in zip(items, outputs)]


def build_pairs(answers: list[dict]) -> list[dict]:
    """TRL preference rows from the base model's answers (``pipeline.evaluate`` rows):
    chosen = the gold answer; rejected = the model's answer when it is wrong (and not
    empty), else the answer of the next training instance of the same task whose answer
    differs from this gold (``meta.rejected_source``: ``model`` or ``other_instance``).
    Rows whose rejected side cannot differ from the chosen are left out."""
    by_task: dict[str, list[dict]] = {}
    for row in answers:
        by_task.setdefault(row["task"], []).append(row)
    pairs = []
    for row in answers:
        gold, response = row["answer"], row["response"].strip()
        if not row["correct"] and response and normalize_answer(response) != normalize_answer(gold):
            rejected, source = response, "model"
        else:
            same = by_task[row["task"]]
            start = same.index(row)
            others = [same[(start + k) % len(same)]["answer"] for k in range(1, len(same))]
            rejected = next((o for o in others if normalize_answer(o) != normalize_answer(gold)), None)
            source = "other_instance"
            if rejected is None:
                continue
        pairs.append({"id": row["id"], "prompt": [{"role": "user", "content": row["prompt"]}],
                      "chosen": [{"role": "assistant", "content": gold}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "meta": {"task": row["task"], "rejected_source": source}})
    return pairs


# -- metrics and curves ---------------------------------------------------------------------

def metric_rows(run: Path) -> list[dict]:
    """The training rows (with a ``loss``) of ``run/metrics.jsonl``, and its eval rows."""
    path = Path(run) / "metrics.jsonl"
    return read_rows(path) if path.exists() else []


def _last(rows: list[dict], key: str):
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else None


def train_block(result, rows: list[dict], keys: tuple[str, ...]) -> dict:
    """Steps, final loss, the run directory and the first/last logged value of ``keys``."""
    block = {"steps": result.steps, "final_loss": result.final_loss, "run": str(result.output_dir)}
    for key in keys:
        values = [r[key] for r in rows if key in r and "loss" in r]
        if values:
            block[key] = {"first": values[0], "last": values[-1]}
    return block


def curve_summary(rows: list[dict], key: str, seed: int) -> dict:
    """``key`` per step: the values, and the mean of the first and last quarter of the steps
    with bootstrap intervals over those steps; ``rising``: the last quarter's interval is
    above the first's."""
    values = [float(r[key]) for r in rows if key in r and "loss" in r]
    quarter = max(1, len(values) // 4)
    first, last = bootstrap_ci(values[:quarter], seed=seed), bootstrap_ci(values[-quarter:], seed=seed)
    return {"per_step": values, "first_quarter": first, "last_quarter": last,
            "rising": bool(values) and last["low"] > first["high"]}


def curve_png(rows: list[dict], keys: tuple[str, ...], title: str) -> bytes:
    """One panel per metric of ``keys`` against the step (the points and a moving average)."""
    plt = pyplot()
    present = [k for k in keys if any(k in r and "loss" in r for r in rows)] or [keys[0]]
    figure, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.3), squeeze=False)
    for ax, key in zip(axes[0], present):
        points = [(r["step"], float(r[key])) for r in rows if key in r and "loss" in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, "o", markersize=3, alpha=0.5, label="per step")
            window = max(1, len(values) // 6)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, "-", label=f"mean of {window}")
            ax.legend(fontsize=7)
        ax.set_xlabel("optimizer step")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    return png(figure)


# -- report ---------------------------------------------------------------------------------

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.up{color:#11772d;font-weight:600}pre{white-space:pre-wrap;background:#f7f7f7;padding:8px;margin:0}
img{max-width:100%}"""

INTRO = {
    "dpo": "DPO (Rafailov et al. 2023) with LoRA on preference pairs built from the training instances: "
           "chosen = the gold short answer, rejected = the untuned model's own greedy answer where it is wrong "
           "(mostly long or off-task), and where it is right another instance's answer of the same task.",
    "grpo": "GRPO (Shao et al. 2024) with LoRA on the training prompts: each step samples several completions "
            "per prompt with the current policy, rewards each by exact match with the gold answer "
            "(GRPO's <code>exact_match</code>: case, outer spaces and a final period ignored) plus 0.5 for a "
            "short one-line answer (<code>format</code>: the untuned model answers no training prompt exactly, "
            "so exact match alone gives GRPO no gradient), and trains on the group-normalised advantages. "
            "No reward model, no value model.",
    "ppo": "InstructGPT's stages 2 and 3 at small scale: a Bradley-Terry reward model (LoRA + a scalar head) "
           "on the DPO pairs, then PPO with LoRA against it, with a per-token KL penalty to the initial model.",
}


def write_report(run_dir: Path, summary: dict, demo: Demo) -> Path:
    """The plots as PNG files and ``report.html``, one page in the quickstart report's style."""
    for name, data in demo.curves.items():
        (run_dir / name).write_bytes(data)
    objective = summary["objective"]
    sections = [
        f"<h1>sftlab quickstart --objective {objective}: {html.escape(summary['model'])}</h1>"
        f"<p>{INTRO[objective]} Evaluation on held-out instances only (seen tasks through held-out "
        f"templates, and unseen tasks), greedy, at most {summary['eval']['max_new_tokens']} new tokens; "
        "95% bootstrap intervals.</p>"
        f"<p>Stage times (s): {html.escape(json.dumps(summary['timings_s']))}</p>",
        _before_after(summary),
        _training(summary),
        "".join(f"<h2>{html.escape(name.removesuffix('.png').replace('_', ' '))}</h2>"
                f"<img src='data:image/png;base64,{_b64(data)}' alt='{name}'>" for name, data in demo.curves.items()),
        _pairs(demo.pairs),
        sample_outputs(demo.before, demo.after),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sftlab quickstart --objective {objective}"
            f"</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _ci(block: dict, percent: bool, spec: str = ".1f") -> str:
    """``mean [low–high]``: percent (the bounds rounded), or numbers in ``spec``."""
    if percent:
        return (f"{100 * block['mean']:.1f}% <small>[{100 * block['low']:.0f}–{100 * block['high']:.0f}]</small>")
    return f"{block['mean']:{spec}} <small>[{block['low']:{spec}}–{block['high']:{spec}}]</small>"


def _before_after(summary: dict) -> str:
    rows = []
    for metric, label, percent in (("exact_match", "exact match", True), ("answer_tokens", "answer length (tokens)", False)):
        for group, row in summary[metric].items():
            rows.append(f"<tr><td>{label}</td><td>{html.escape(group)}</td><td>{row['before']['n']}</td>"
                        f"<td>{_ci(row['before'], percent)}</td><td>{_ci(row['after'], percent)}</td>"
                        f"<td class='{'up' if row['clear_change'] else ''}'>{'yes' if row['clear_change'] else 'no'}</td></tr>")
    return ("<h2>Before and after, held-out items</h2><table><tr><th>metric</th><th>items</th><th>n</th>"
            "<th>before</th><th>after</th><th>clear change (intervals apart)</th></tr>" + "".join(rows) + "</table>")


def _training(summary: dict) -> str:
    parts = ["<h2>Training</h2><ul>"]
    if "pairs" in summary:
        p = summary["pairs"]
        parts.append(f"<li>{p['n']} pairs; rejected side: {p['rejected_source'].get('model', 0)} the model's own "
                     f"wrong answer, {p['rejected_source'].get('other_instance', 0)} another instance's answer "
                     f"(the model was right: base exact match on the training prompts "
                     f"{_ci(p['base_exact_match_on_training_prompts'], True)})</li>")
    if "reward_model" in summary:
        r = summary["reward_model"]
        parts.append(f"<li>reward model: {r['steps']} steps; held-out pair accuracy "
                     f"{_ci(r['heldout_pair_accuracy'], True)} (n={r['heldout_pair_accuracy']['n']} pairs)</li>")
    t = summary["train"]
    extra = ", ".join(f"{k} {v['first']:.3g} → {v['last']:.3g}" for k, v in t.items() if isinstance(v, dict))
    parts.append(f"<li>{summary['objective']}: {t['steps']} steps, final loss {t['final_loss']}; first → last "
                 f"logged step: {html.escape(extra)}</li>")
    for key in ("reward_curve", "kl"):
        if key in summary:
            c = summary[key]
            parts.append(f"<li>{key.replace('_', ' ')}: first quarter of the steps "
                         f"{_ci(c['first_quarter'], False, '.3g')}, last quarter {_ci(c['last_quarter'], False, '.3g')} "
                         f"(n={c['last_quarter']['n']} steps each)</li>")
    return "".join(parts) + "</ul>"


def _pairs(pairs: list[dict], count: int = 6) -> str:
    if not pairs:
        return ""
    step = max(1, len(pairs) // count)
    cells = "".join(f"<tr><td>{html.escape(p['meta']['task'])}</td><td><pre>{html.escape(p['prompt'][0]['content'])}</pre></td>"
                    f"<td>{html.escape(p['chosen'][0]['content'])}</td><td><pre>{html.escape(p['rejected'][0]['content'])}</pre></td>"
                    f"<td>{p['meta']['rejected_source']}</td></tr>" for p in pairs[::step][:count])
    return ("<h2>Example pairs</h2><table><tr><th>task</th><th>prompt</th><th>chosen</th><th>rejected</th>"
            f"<th>rejected from</th></tr>{cells}</table>")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def print_summary(summary: dict, report: Path) -> None:
    print("\nheld-out items (95% interval):")
    for metric, percent in (("exact_match", True), ("answer_tokens", False)):
        for group, row in summary[metric].items():
            b, a = row["before"], row["after"]
            scale, unit = (100, "%") if percent else (1, " tok")
            print(f"  {metric:13s} {group:28s} before {scale * b['mean']:5.1f}{unit} [{scale * b['low']:.1f}-"
                  f"{scale * b['high']:.1f}]   after {scale * a['mean']:5.1f}{unit} [{scale * a['low']:.1f}-"
                  f"{scale * a['high']:.1f}]   (n={b['n']})")
    if "reward_model" in summary:
        r = summary["reward_model"]["heldout_pair_accuracy"]
        print(f"  reward model held-out pair accuracy {100 * r['mean']:.1f}% [{100 * r['low']:.0f}-"
              f"{100 * r['high']:.0f}] (n={r['n']})")
    for key in ("reward_curve", "kl"):
        if key in summary:
            c = summary[key]
            print(f"  {key}: first quarter {c['first_quarter']['mean']:.3f}, last quarter "
                  f"{c['last_quarter']['mean']:.3f} (n={c['last_quarter']['n']} steps each)")
    print(f"\nreport: {report}")
