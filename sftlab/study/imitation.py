"""``sftlab study imitation``: imitating a stronger model copies its style, not its capability
(Gudibande et al. 2023, "The False Promise of Imitating Proprietary LLMs").

A teacher answers the training prompts of the *supported* tasks (greedy; cached under a
hash of the teacher and the prompts). Students are LoRA runs of ``model`` on nested subsets
of those answers (for each seed the smaller sets are among the larger). Then:

- accuracy (exact match, held-out items) of the untuned model, the teacher and every student
  on the supported tasks and on the *unsupported* ones (every other task), with each
  student's paired differences from the untuned model and from the teacher;
- with a ``judge``: every student's answers against the teacher's on the first
  ``judge_per_task`` held-out items of each task, judged in both orders
  (``sftlab.eval.judge.pairwise``) -> the student's win rate against the teacher (a tie
  counts one half), with a bootstrap interval over items; the untuned model's win rate is
  the reference.

The paper's finding, in these numbers: a judge rates imitators close to the teacher (win
rate near 50%) and their accuracy rises on the supported tasks, while on the unsupported
ones it barely moves from the untuned model's: the gap to the teacher stays.

With the default teacher (a LoRA run on the whole pool) the prompts it answers are ones it
was tuned on; ``distilled.agreement_with_gold`` says how often its answer is the gold one.
"""
from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from sftlab.data.io import read_rows
from sftlab.errors import ConfigError
from sftlab.eval.metrics import bootstrap_ci
from sftlab.report.charts import png, pyplot
from sftlab.study.common import Clock, check_endpoint, open_study, run_info
from sftlab.study.compare_data import check_judge
from sftlab.study.config import ImitationConfig
from sftlab.study.report import paired_difference, pct, score_block, signed_pct, write_outputs
from sftlab.study.runs import Benchmark, RunStore, digest, model_fingerprint, write_jsonl
from sftlab.study.size_sweep import nested_subsets
from sftlab.types import Conversation, Message

GROUPS = ("supported", "unsupported")


def task_of(conversation: Conversation) -> str | None:
    return (conversation.meta or {}).get("task")


def check_config(config: ImitationConfig, benchmark: Benchmark) -> tuple[list[Conversation], list[str]]:
    """-> (the supported tasks' pool, the unsupported tasks). Every bad key fails here with a
    ``ConfigError`` naming it, before anything loads or trains (endpoints are asked too)."""
    pool_tasks = sorted({t for c in benchmark.pool if (t := task_of(c))})
    item_tasks = sorted({item["task"] for item in benchmark.items})
    supported = config.supported_tasks
    if not supported or len(set(supported)) != len(supported):
        raise ConfigError(f"supported_tasks: give each imitated task once, got {supported} "
                          f"(tasks with training prompts: {pool_tasks})")
    unknown = [t for t in supported if t not in pool_tasks]
    if unknown:
        raise ConfigError(f"supported_tasks: {unknown} have no training prompts in the pool; choose among "
                          f"{pool_tasks}")
    unsupported = [t for t in item_tasks if t not in supported]
    if not unsupported:
        raise ConfigError(f"supported_tasks: {supported} leave no unsupported task to measure; "
                          f"leave some of {item_tasks} out")
    if not any(item["task"] in supported for item in benchmark.items):
        raise ConfigError(f"supported_tasks: {supported} have no evaluation items; raise eval_per_task")
    pool = [c for c in benchmark.pool if task_of(c) in supported]
    sizes = config.imitation_sizes
    if not sizes or any(n <= 0 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise ConfigError(f"imitation_sizes: must be positive and strictly increasing, got {list(sizes)} "
                          "(e.g. imitation_sizes=[32,128])")
    if sizes[-1] > len(pool):
        raise ConfigError(f"imitation_sizes: the largest size {sizes[-1]} exceeds the {len(pool)} training "
                          f"prompts of the supported tasks ({len(supported)} tasks); use sizes up to "
                          f"{len(pool)}, raise train_per_task or add supported_tasks")
    if config.judge_per_task <= 0:
        raise ConfigError(f"judge_per_task: must be positive, got {config.judge_per_task}")
    if config.teacher_max_tokens <= 0:
        raise ConfigError(f"teacher_max_tokens: must be positive, got {config.teacher_max_tokens}")
    if config.teacher_base_url and not config.teacher:
        raise ConfigError("teacher_base_url: given without a teacher; name the model served there "
                          "(teacher=MODEL), or leave teacher_base_url empty for the LoRA teacher")
    if config.teacher_base_url:
        check_endpoint(config.teacher_base_url, config.teacher_api_key_env, key="teacher_base_url", role="teacher")
    elif config.teacher:
        from sftlab.models import ModelNotFoundError, resolve_model  # lazy: `default` converts on first use

        try:
            resolve_model(config.teacher)
        except ModelNotFoundError as error:
            raise ConfigError(f"teacher: {error}") from None
    if config.judge:
        check_judge(config)
    return pool, unsupported


def run_imitation(config: ImitationConfig, benchmark: Benchmark) -> dict:
    """Distil, train the students, measure accuracy and win rates; write study.json, plots and
    report.html; returns the summary written to study.json."""
    pool, unsupported = check_config(config, benchmark)
    groups = {"supported": set(config.supported_tasks), "unsupported": set(unsupported)}
    clock = Clock()
    out, store = open_study(config, "imitation")
    stats = {"seed": config.data_seed, "resamples": config.bootstrap_resamples}

    teacher = Teacher(config, store, benchmark)
    print(f"[teacher] {teacher.label}", flush=True)
    teacher_rows = teacher.evaluate()
    timings = {"teacher": clock.seconds()}
    distilled, distill_info = distil(teacher, pool, benchmark, config)
    if len(distilled) < config.imitation_sizes[-1]:
        raise ConfigError(f"imitation_sizes: the teacher gave {len(distilled)} usable answers of {len(pool)} "
                          f"prompts (empty ones are dropped); use sizes up to {len(distilled)}")
    teacher.release()
    base_rows = store.evaluate(benchmark, None)
    timings["distill_and_untuned"] = round(clock.seconds() - timings["teacher"], 1)

    subsets = {seed: nested_subsets(distilled, config.imitation_sizes, seed) for seed in config.seeds}
    students = []
    for size in config.imitation_sizes:
        print(f"[students: n={size}] {len(config.seeds)} seed(s)", flush=True)
        runs = [store.train(subsets[seed][size], seed) for seed in config.seeds]
        students.append({"n": size, "runs": runs, "rows": [store.evaluate(benchmark, run) for run in runs]})

    timings["students"] = round(clock.seconds() - sum(timings.values()), 1)
    judge = Judging(config, store, benchmark, teacher_rows, out) if config.judge else None
    measured = []
    for student in students:
        point = _student_point(student, base_rows, teacher_rows, groups, stats)
        point["win_rate"] = (judge.win_rate(f"n{student['n']}", student["rows"], groups, config.seeds) if judge
                             else unavailable(config))
        measured.append(point)

    judge_info = judge.info(base_rows, groups) if judge else unavailable(config)
    timings["judge"] = round(clock.seconds() - sum(timings.values()), 1)
    largest = measured[-1]
    summary = {
        "study": "imitation", "model": config.model, "benchmark": benchmark.name, "metric": benchmark.metric,
        "teacher": teacher.info(), "supported_tasks": list(config.supported_tasks), "unsupported_tasks": unsupported,
        "supported_pool": len(pool), "eval_items": {g: len(only(benchmark.items, t)) for g, t in groups.items()},
        "seeds": config.seeds, "imitation_sizes": config.imitation_sizes, "distilled": distill_info,
        "base": _accuracy(base_rows, groups, stats), "teacher_accuracy": _accuracy(teacher_rows, groups, stats),
        "students": measured,
        "judge": judge_info,
        "headline": {"n": largest["n"], "win_rate": largest["win_rate"],
                     "student_minus_teacher": largest["minus_teacher"], "student_minus_base": largest["minus_base"]},
        "jobs": {"trained": store.trained, "reused": store.reused}, "timings_s": {**timings, "total": clock.seconds()},
        "config": asdict(config),
    }
    store.release()
    charts = {"accuracy_vs_size.png": accuracy_chart(summary)}
    if judge:
        charts["win_rate_vs_size.png"] = win_rate_chart(summary)
    report = write_outputs(out, summary, charts, _sections(summary), f"sftlab study imitation: {config.model}")
    for g in GROUPS:
        print(f"n={largest['n']} {g}: {pct(largest['accuracy'][g])}; minus teacher "
              f"{signed_pct(largest['minus_teacher'][g])}, minus untuned {signed_pct(largest['minus_base'][g])}")
    win = largest["win_rate"]
    print("win rate against the teacher: " + (pct(win["all"]) if "all" in win else win["unavailable"]))
    print(f"report: {report}")
    return summary


def _student_point(student: dict, base_rows: list[dict], teacher_rows: list[dict], groups: dict[str, set[str]],
                   stats: dict) -> dict:
    """One imitation size: accuracy per group (seeds pooled per item) and its paired
    differences from the untuned model and from the teacher."""
    def by_group(rows: list[dict], tasks: set[str]) -> list[list[dict]]:
        return [only(r, tasks) for r in rows]

    rows = student["rows"]
    return {"n": student["n"], "runs": [run_info(r) for r in student["runs"]],
            "accuracy": {g: score_block(by_group(rows, t), **stats) for g, t in groups.items()},
            "minus_base": {g: paired_difference(by_group(rows, t), [only(base_rows, t)], **stats)
                           for g, t in groups.items()},
            "minus_teacher": {g: paired_difference(by_group(rows, t), [only(teacher_rows, t)], **stats)
                              for g, t in groups.items()}}


def only(rows: Sequence[dict], tasks: set[str]) -> list[dict]:
    return [row for row in rows if row["task"] in tasks]


def unavailable(config: ImitationConfig) -> dict:
    return {"unavailable": f"no judge configured (judge={config.judge!r}); give judge=MODEL "
                           "(with judge_base_url=URL for an OpenAI-compatible endpoint)"}


def _accuracy(rows: list[dict], groups: dict[str, set[str]], stats: dict) -> dict:
    """Per group, and per task, of one model's evaluation rows."""
    tasks = sorted({row["task"] for row in rows})
    return {**{g: score_block([only(rows, t)], **stats) for g, t in groups.items()},
            "per_task": {t: score_block([only(rows, {t})], **stats) for t in tasks}}


class Teacher:
    """The model imitated: a LoRA run of the study's model (``teacher: ""``), a model run
    in-process, or a served one. Answers prompts greedily; its evaluation is cached like a
    run's."""

    def __init__(self, config: ImitationConfig, store: RunStore, benchmark: Benchmark) -> None:
        self.config, self.store, self.benchmark = config, store, benchmark
        self.run, self._client = None, None
        if config.teacher_base_url:
            self.kind, self.label = "remote", f"{config.teacher} at {config.teacher_base_url}"
            self.identity = ["remote", config.teacher, config.teacher_base_url.rstrip("/")]
        elif config.teacher:
            from sftlab.models import resolve_model  # lazy: as in check_config

            self.path = resolve_model(config.teacher)
            self.kind, self.label = "local", config.teacher
            self.identity = ["local", model_fingerprint(self.path)]
        else:
            self.kind = "lora"
            print(f"[teacher] a LoRA run on the whole pool ({len(benchmark.pool)} examples)", flush=True)
            self.run = store.train(benchmark.pool, config.seeds[0])
            self.label = f"LoRA run {Path(self.run['run_dir']).name} on the whole pool"
            self.identity = ["lora", store.fingerprint, self.run["key"]]

    def info(self) -> dict:
        return {"kind": self.kind, "teacher": self.config.teacher, "base_url": self.config.teacher_base_url,
                "label": self.label, "run": run_info(self.run) if self.run else None}

    def client(self):
        """A ``sftlab.synth`` teacher (``complete(ChatRequest list)``), made once."""
        if self._client is None:
            from sftlab.infer.hf import HFGenerator  # lazy: torch
            from sftlab.synth.client import GeneratorTeacher, HTTPTeacher, TeacherConfig

            batch = self.config.eval_batch_size
            if self.kind == "remote":
                self._client = HTTPTeacher(TeacherConfig(
                    base_url=self.config.teacher_base_url, model=self.config.teacher,
                    api_key_env=self.config.teacher_api_key_env, cache_dir=str(self.store.root / "teacher-cache")))
            elif self.kind == "local":
                self._client = GeneratorTeacher(HFGenerator.from_name(self.path, batch_size=batch), self.label)
            else:
                generator = HFGenerator.from_name(self.store.model_path, adapter=self.run["adapter"], batch_size=batch)
                self._client = GeneratorTeacher(generator, f"lora:{self.run['key']}")
        return self._client

    def release(self) -> None:
        self._client = None  # a local teacher's weights go before the students train

    def ask(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        from sftlab.synth.client import ChatRequest  # lazy: httpx

        requests = [ChatRequest([Message("user", p)], temperature=0.0, max_tokens=max_tokens) for p in prompts]
        return self.client().complete(requests)

    def evaluate(self) -> list[dict]:
        """Per-item answers and scores on the held-out items, as ``RunStore.evaluate`` gives."""
        if self.run:
            return self.store.evaluate(self.benchmark, self.run)
        items, settings = self.benchmark.items, self.store.settings["eval"]
        path = self.store.root / f"eval-{digest('eval', self.identity, items, settings)}.jsonl"
        if path.exists():
            self.store.reused += 1
            return read_rows(path)
        print(f"      evaluating teacher {self.label} on {len(items)} items", flush=True)
        answers = self.ask([item["prompt"] for item in items], settings["max_new_tokens"])
        rows = [{**item, "response": text, "correct": float(self.benchmark.score(text, item["answer"]))}
                for item, text in zip(items, answers)]
        write_jsonl(path, rows)
        return rows


def distil(teacher: Teacher, pool: list[Conversation], benchmark: Benchmark,
           config: ImitationConfig) -> tuple[list[Conversation], dict]:
    """The teacher's answers to the supported pool's prompts, as conversations (the pool's
    ids and tasks kept), through ``sftlab.synth.distill``; cached by teacher and prompts."""
    from sftlab.synth import distill  # lazy: tqdm, the synth stack

    prompts = [(c.id, prompt_of(c)) for c in pool]
    key = digest("imitation-distill", teacher.identity, prompts, config.teacher_max_tokens)
    path = teacher.store.root / f"distill-{key}.jsonl"
    if path.exists():
        teacher.store.reused += 1
        rows = read_rows(path)
    else:
        print(f"      the teacher answers {len(pool)} prompts of {len(config.supported_tasks)} supported tasks",
              flush=True)
        prompt_file, partial = path.with_suffix(".prompts.jsonl"), path.with_suffix(".partial.jsonl")
        write_jsonl(prompt_file, [{"id": cid, "messages": [{"role": "user", "content": text}]}
                                  for cid, text in prompts])
        distill.run(distill.DistillConfig(prompts=str(prompt_file), output=str(partial), temperature=0.0,
                                          max_tokens=config.teacher_max_tokens, batch_size=config.eval_batch_size),
                    teacher=teacher.client())
        answers = {row["meta"]["prompt_id"]: row["messages"][-1]["content"] for row in read_rows(partial)}
        rows = [{"id": c.id, "task": task_of(c), "prompt": text, "answer": answers[c.id], "gold": gold_of(c)}
                for c, (_, text) in zip(pool, prompts) if c.id in answers]  # empty answers were dropped
        write_jsonl(path, rows)
        partial.unlink()
        prompt_file.unlink()
    conversations = [Conversation([Message("user", r["prompt"]), Message("assistant", r["answer"])], id=r["id"],
                                  source=f"imitation:{teacher.label}", meta={"task": r["task"]}) for r in rows]
    agreement = bootstrap_ci([benchmark.score(r["answer"], r["gold"]) for r in rows], seed=config.data_seed,
                             resamples=config.bootstrap_resamples)
    return conversations, {"path": str(path), "prompts": len(pool), "answers": len(rows),
                           "dropped_empty": len(pool) - len(rows), "agreement_with_gold": agreement}


def prompt_of(conversation: Conversation) -> str:
    users = [m.content for m in conversation.messages if m.role == "user"]
    if len(users) != 1:
        raise ConfigError(f"supported_tasks: pool example {conversation.id} has {len(users)} user turns; "
                          "imitation needs one-turn prompts")
    return users[0]


def gold_of(conversation: Conversation) -> str:
    return next((m.content for m in reversed(conversation.messages) if m.role == "assistant"), "")


class Judging:
    """Pairwise verdicts of the judge on student (or untuned) answers against the teacher's,
    on the first ``judge_per_task`` held-out items of every task (distinct prompts)."""

    def __init__(self, config: ImitationConfig, store: RunStore, benchmark: Benchmark, teacher_rows: list[dict],
                 out: Path) -> None:
        from sftlab.eval.judge.client import make_judge  # lazy: httpx, a local judge's model

        self.config, self.out = config, out
        self.stats = {"seed": config.data_seed, "resamples": config.bootstrap_resamples}
        self.judge = make_judge(config.judge, base_url=config.judge_base_url or None,
                                cache_dir=store.root / "judge-cache", api_key_env=config.judge_api_key_env)
        self.ids, seen, count = [], set(), {}
        for item in benchmark.items:
            if item["prompt"] not in seen and count.get(item["task"], 0) < config.judge_per_task:
                seen.add(item["prompt"])
                count[item["task"]] = count.get(item["task"], 0) + 1
                self.ids.append(item["id"])
        self.teacher = self._outputs(teacher_rows, "teacher")
        self.files: dict[str, list[str]] = {}

    def _outputs(self, rows: list[dict], name: str) -> list[dict]:
        by_id = {row["id"]: row for row in rows}
        return [{"instruction": by_id[i]["prompt"], "output": by_id[i]["response"], "generator": name,
                 "id": i, "task": by_id[i]["task"]} for i in self.ids]

    def annotate(self, name: str, rows: list[dict]) -> list[dict]:
        """One model's answers judged against the teacher's -> annotation rows with ``id`` and
        ``task``; kept in ``judgements/<name>.jsonl``. A judge whose replies hold no verdict
        raises ``JudgeError``."""
        from sftlab.eval.judge.client import JudgeError
        from sftlab.eval.judge.pairwise import judge_pairs

        mine = self._outputs(rows, name)
        annotations = judge_pairs(self.teacher, mine, self.judge, max_tokens=self.config.judge_max_tokens,
                                  off_switch=None)  # a study's judge must give verdicts
        for annotation, teacher in zip(annotations, self.teacher):
            annotation.update(id=teacher["id"], task=teacher["task"])
        if all(a["preference"] is None for a in annotations):
            raise JudgeError(f"judge '{self.config.judge}' gave no readable verdict on any of {len(annotations)} "
                             f"pairs ({name}); the first reply reads: {annotations[0]['raw_completions'][0][:300]!r}")
        path = self.out / "judgements" / f"{name}.jsonl"
        write_jsonl(path, annotations)
        self.files.setdefault(name, []).append(str(path))
        return annotations

    def win_rate(self, name: str, runs: list[list[dict]], groups: dict[str, set[str]],
                 seeds: Sequence[int] = ()) -> dict:
        """Win rate against the teacher over the judged items (each item's P(better), ties
        one half, averaged over seeds), overall and per group, with bootstrap intervals."""
        from sftlab.eval.judge.lc import winrate

        judged = [self.annotate(f"{name}-seed{seed}" if seeds else name, rows)
                  for seed, rows in zip(seeds or [None], runs)]
        readable = set.intersection(*({a["id"] for a in annotations if a["preference"] is not None}
                                      for annotations in judged))
        scored = [[{"id": a["id"], "task": a["task"], "correct": a["preference"] - 1.0}
                   for a in annotations if a["id"] in readable] for annotations in judged]
        block = {"all": score_block(scored, **self.stats)}
        for g, tasks in groups.items():
            block[g] = score_block([only(rows, tasks) for rows in scored], **self.stats)
        counts = winrate([a for annotations in judged for a in annotations])
        block["counts"] = {k: counts[k] for k in ("n_wins", "n_wins_base", "n_draws", "n_total")}
        block["no_verdict"] = len(self.ids) - len(readable)
        return block

    def info(self, base_rows: list[dict], groups: dict[str, set[str]]) -> dict:
        return {"judge": self.config.judge, "base_url": self.config.judge_base_url, "items": len(self.ids),
                "per_task": self.config.judge_per_task, "both_orders": True,
                "untuned_win_rate": self.win_rate("untuned", [base_rows], groups), "files": self.files}


def _sections(summary: dict) -> list[str]:
    teacher, distilled = summary["teacher"], summary["distilled"]
    judge = summary["judge"]
    parts = [f"<p>Teacher: {html.escape(teacher['label'])}. It answered the {distilled['prompts']} training prompts "
             f"of the supported tasks ({', '.join(summary['supported_tasks'])}); {distilled['answers']} answers kept, "
             f"{pct(distilled['agreement_with_gold'])} of them the gold answer. Students: LoRA runs of "
             f"{html.escape(summary['model'])} on nested subsets of those answers, seeds {summary['seeds']}. "
             f"Unsupported tasks: {', '.join(summary['unsupported_tasks'])}. Accuracy: {summary['metric']} on "
             f"held-out items ({summary['eval_items']['supported']} supported, "
             f"{summary['eval_items']['unsupported']} unsupported)."
             "</p>"]
    head = summary["headline"]
    win = head["win_rate"]
    parts.append(f"<p><b>Style vs capability at n={head['n']}</b>: win rate against the teacher "
                 + (pct(win["all"]) if "all" in win else html.escape(win["unavailable"]))
                 + "; accuracy minus the teacher's: supported "
                 f"{signed_pct(head['student_minus_teacher']['supported'])}, unsupported "
                 f"{signed_pct(head['student_minus_teacher']['unsupported'])}; minus the untuned model's: supported "
                 f"{signed_pct(head['student_minus_base']['supported'])}, unsupported "
                 f"{signed_pct(head['student_minus_base']['unsupported'])}.</p>")
    rows = [f"<tr><td>untuned</td><td>{pct(summary['base']['supported'])}</td>"
            f"<td>{pct(summary['base']['unsupported'])}</td><td></td><td></td>"
            f"<td>{pct(judge['untuned_win_rate']['all']) if 'items' in judge else ''}</td></tr>"]
    for p in summary["students"]:
        rows.append(f"<tr><td>student n={p['n']}</td><td>{pct(p['accuracy']['supported'])}</td>"
                    f"<td>{pct(p['accuracy']['unsupported'])}</td>"
                    f"<td>{signed_pct(p['minus_teacher']['supported'])}</td>"
                    f"<td>{signed_pct(p['minus_teacher']['unsupported'])}</td>"
                    f"<td>{pct(p['win_rate']['all']) if 'all' in p['win_rate'] else ''}</td></tr>")
    rows.append(f"<tr><td>teacher</td><td>{pct(summary['teacher_accuracy']['supported'])}</td>"
                f"<td>{pct(summary['teacher_accuracy']['unsupported'])}</td><td></td><td></td>"
                "<td>50% (itself)</td></tr>")
    judged = (f"Win rate: judge {html.escape(judge['judge'])}, {judge['items']} items ({judge['per_task']} per task), "
              "both orders, ties one half." if "items" in judge else html.escape(judge["unavailable"]) + ".")
    parts.append("<table><tr><th>model</th><th>supported</th><th>unsupported</th><th>supported minus teacher</th>"
                 f"<th>unsupported minus teacher</th><th>win rate vs teacher</th></tr>{''.join(rows)}</table>"
                 f"<p>{judged}</p>")
    return parts


COLOURS = {"supported": "#2a7ab9", "unsupported": "#d9822b"}


def accuracy_chart(summary: dict) -> bytes:
    """Student accuracy against imitation size per group (95% intervals), the teacher's level
    as a solid line and the untuned model's as a dashed one, in the group's colour."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    sizes = [p["n"] for p in summary["students"]]
    for g in GROUPS:
        means, errors = _bars([p["accuracy"][g] for p in summary["students"]])
        axes.errorbar(sizes, means, yerr=errors, fmt="o-", capsize=3, color=COLOURS[g], label=f"students, {g}")
        axes.axhline(100 * summary["teacher_accuracy"][g]["mean"], color=COLOURS[g], label=f"teacher, {g}")
        axes.axhline(100 * summary["base"][g]["mean"], color=COLOURS[g], linestyle="--", label=f"untuned, {g}")
    _size_axis(axes, sizes)
    axes.set_ylabel(f"{summary['metric']} (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=7)
    return png(figure)


def win_rate_chart(summary: dict) -> bytes:
    """Win rate against the teacher per size (95% intervals), parity at 50%, the untuned
    model's win rate dashed."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    sizes = [p["n"] for p in summary["students"]]
    means, errors = _bars([p["win_rate"]["all"] for p in summary["students"]])
    axes.errorbar(sizes, means, yerr=errors, fmt="o-", capsize=3, color="#2a7ab9", label="students vs teacher")
    axes.axhline(50, color="#444444", label="parity with the teacher")
    axes.axhline(100 * summary["judge"]["untuned_win_rate"]["all"]["mean"], color="#999999", linestyle="--",
                 label="untuned vs teacher")
    _size_axis(axes, sizes)
    axes.set_ylabel("win rate against the teacher (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=7)
    return png(figure)


def _bars(blocks: list[dict]) -> tuple[list[float], list[list[float]]]:
    """Means in percent and their asymmetric 95% error bars, as ``errorbar`` takes them."""
    means = [100 * b["mean"] for b in blocks]
    return means, [[m - 100 * b["low"] for m, b in zip(means, blocks)],
                   [100 * b["high"] - m for m, b in zip(means, blocks)]]


def _size_axis(axes, sizes: list[int]) -> None:
    axes.set_xscale("log")
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()
    axes.set_xlabel("imitation examples n")
    axes.grid(alpha=0.3)

