"""``sftlab study superficial``: is instruction tuning mostly style? Two measurements.

**Token-distribution shift** (URIAL, Lin et al. 2023). The tuned model greedily answers each
prompt; the untuned (base) model then reads prompt + answer in one forward pass (teacher
forcing), and each generated token gets its rank under the base given the same prefix:
``rank = 1 + the number of vocabulary entries with a strictly larger logit``. Rank 1 is
*unshifted* (the base would have said it too), ranks 2-3 *marginal*, above 3 *shifted*.
Both models read the same token ids: the prompt rendered by the *tuned* model's chat
template (the two must share a vocabulary), the response as the tuned model sampled it,
its end-of-turn token included (stopping is part of the answer). Fractions pool tokens
over responses and carry a bootstrap interval over responses (the unit that was sampled);
the same per position bucket of the response, and the most often shifted tokens (URIAL
finds them mostly style and discourse words). As a check, the tuned model rescores its
own answers the same way: greedy decoding means rank 1 everywhere, up to the rounding
between cached decoding and one full forward pass.

The tuned model is ``tuned`` (an adapter, a training run directory, a model directory, or
``tiny``/``default``), or by default a LoRA run on the whole checkable-task pool through the
run store (the ``original`` variant's first seed below: the same run, trained once).

**Instruction variants** (Kung & Peng 2023). The same seen-task pool trains one run per
variant and seed, and every run is evaluated on the same held-out items with their
*original* prompts (``Benchmark``), with paired differences from ``original``:

- ``original``: the pool as built;
- ``simplified``: each prompt keeps the instance's input (the template's field values, one
  per line) and replaces the task description with the task's output space only, derived
  from the pool's answers (``output_space``: "Answer with one of: negative, positive",
  "Answer with a number.", ...);
- ``delusive``: the prompt kept, the answer replaced by another instance's answer of the
  same task, drawn (seeded by ``data_seed``) among the task's answers that differ from its
  own: a wrong input-output mapping over the right output space.

Recovering the field values needs each example's template: ``meta.task`` and
``meta.template`` (as the quickstart's pool carries them) index ``templates``, which the
caller passes (``sftlab study`` gives the quickstart's: ``sftlab.study`` does not import
``sftlab.quickstart``, they sit side by side).
"""
from __future__ import annotations

import html
import json
import random
import re
import string
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from sftlab.data.io import read_rows
from sftlab.data.prompts import read_prompts
from sftlab.errors import ConfigError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator, prompt_to_ids
from sftlab.models import (BUILTIN, ModelNotFoundError, adapter_base, load_model, load_tokenizer, resolve_model,
                           split_adapter_run)
from sftlab.report.charts import png, pyplot
from sftlab.study.common import Clock, open_study, run_info
from sftlab.study.compare_data import verdict
from sftlab.study.config import SuperficialConfig
from sftlab.study.report import paired_difference, pct, score_block, signed_pct, write_outputs
from sftlab.study.runs import Benchmark, RunStore, digest, model_fingerprint, write_jsonl
from sftlab.types import Conversation, Message

CATEGORIES = ("unshifted", "marginal", "shifted")
MARGINAL_RANK = 3  # ranks 2..3 are marginal, above it shifted (URIAL's cut-offs)
VARIANTS = ("original", "simplified", "delusive")
MAX_LABELS = 5  # a task with at most this many distinct (non-numeric) answers is a classification

# Templates: task name -> its templates (``str.format`` strings), indexed by ``meta.template``.
Templates = Mapping[str, Sequence[str]]


# ---------------------------------------------------------------- checks

def check_config(config: SuperficialConfig) -> None:
    """Every bad key fails here, naming it, before anything loads or trains."""
    if config.tuned and config.tuned not in BUILTIN:
        path = Path(config.tuned).expanduser()
        if not path.exists():
            raise ConfigError(f"tuned: {path} does not exist; give an adapter, a training run directory or a "
                              "model directory (or leave tuned empty: the study trains a LoRA run itself)")
        try:
            split_adapter_run(path) or resolve_model(path)
        except ModelNotFoundError as error:
            raise ConfigError(f"tuned: {error}") from None
    if config.prompts and not Path(config.prompts).is_file():
        raise ConfigError(f"prompts: no such file: {config.prompts} (a JSONL of prompts, e.g. "
                          '{"prompt": "..."} rows; empty: the held-out checkable items)')
    starts = config.position_buckets
    if not starts or starts[0] != 1 or list(starts) != sorted(set(starts)):
        raise ConfigError(f"position_buckets: first positions of the buckets, starting at 1 and strictly "
                          f"increasing, got {list(starts)} (e.g. [1, 6, 21]: tokens 1-5, 6-20, 21+)")
    for key, low in (("top_tokens", 1), ("response_tokens", 1), ("max_prompts", 0)):
        if getattr(config, key) < low:
            raise ConfigError(f"{key}: must be at least {low}, got {getattr(config, key)}")
    unknown = [v for v in config.variants if v not in VARIANTS]
    if unknown or len(set(config.variants)) != len(config.variants):
        raise ConfigError(f"variants: each of {', '.join(VARIANTS)} at most once, got {config.variants}")
    if config.variants and "original" not in config.variants:
        raise ConfigError(f"variants: include original (the others are compared with it), got {config.variants}")
    if not config.token_shift and not config.variants:
        raise ConfigError("variants: empty and token_shift=false leave nothing to measure")


# ---------------------------------------------------------------- (a) token-distribution shift

def token_ranks(model, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[int]:
    """Each response token's rank under ``model`` given the prompt and the response before it,
    from one forward pass over ``prompt_ids + response_ids``: 1 + the number of vocabulary
    entries whose logit is strictly larger than the token's.

    ``logits [1, P + R, V]``; position ``P + j - 1`` predicts response token ``j``.
    """
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()  # [R, V]
    chosen = logits.gather(1, torch.tensor(list(response_ids), device=logits.device)[:, None])
    return (1 + (logits > chosen).sum(-1)).tolist()


def category(rank: int) -> str:
    """Rank 1 unshifted, 2-3 marginal, above 3 shifted.

    >>> [category(r) for r in (1, 2, 3, 4)]
    ['unshifted', 'marginal', 'marginal', 'shifted']
    """
    return "unshifted" if rank == 1 else "marginal" if rank <= MARGINAL_RANK else "shifted"


def bucket_labels(starts: Sequence[int]) -> list[str]:
    """Labels of the position buckets that start at ``starts``.

    >>> bucket_labels([1, 6, 21]), bucket_labels([1, 2])
    (['1-5', '6-20', '21+'], ['1', '2+'])
    """
    ends = [f"-{s - 1}" if s - 1 > first else "" for first, s in zip(starts, starts[1:])]
    return [f"{first}{end}" for first, end in zip(starts, ends)] + [f"{starts[-1]}+"]


def bucket_of(position: int, starts: Sequence[int]) -> int:
    """The bucket index of a 1-based response position.

    >>> [bucket_of(p, [1, 6, 21]) for p in (1, 5, 6, 20, 21, 99)]
    [0, 0, 1, 1, 2, 2]
    """
    return sum(position >= s for s in starts) - 1


def ratio_block(numerators: Sequence[float], denominators: Sequence[float], *, seed: int, resamples: int) -> dict:
    """``sum(numerators) / sum(denominators)`` with a percentile-bootstrap 95% interval over
    the units (responses) that have a non-zero denominator; ``n``: those units, ``tokens``:
    the denominator's total.

    >>> block = ratio_block([1, 0, 3], [2, 0, 4], seed=0, resamples=50)
    >>> round(block["mean"], 3), block["n"], block["tokens"]
    (0.667, 2, 6)
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    num, den = num[den > 0], den[den > 0]
    if not len(den):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "stderr": float("nan"),
                "n": 0, "tokens": 0}
    draws = np.random.default_rng(seed).integers(0, len(den), size=(resamples, len(den)))
    ratios = num[draws].sum(1) / den[draws].sum(1)
    return {"mean": float(num.sum() / den.sum()), "low": float(np.quantile(ratios, 0.025)),
            "high": float(np.quantile(ratios, 0.975)), "stderr": float(ratios.std(ddof=1)) if resamples > 1 else 0.0,
            "n": int(len(den)), "tokens": int(den.sum())}


def shift_summary(responses: Sequence[dict], starts: Sequence[int], top: int, *, seed: int, resamples: int) -> dict:
    """The fractions overall and per position bucket, the tuned model's own check, and the
    ``top`` most often shifted tokens; ``responses``: rows of ``measure_shift``."""
    stats = {"seed": seed, "resamples": resamples}
    cats = [[category(r) for r in row["ranks"]] for row in responses]
    lengths = [len(c) for c in cats]
    overall = {c: ratio_block([row.count(c) for row in cats], lengths, **stats) for c in CATEGORIES}
    by_position = []
    for b, label in enumerate(bucket_labels(starts)):
        inside = [[c for j, c in enumerate(row, 1) if bucket_of(j, starts) == b] for row in cats]
        by_position.append({"positions": label, **{c: ratio_block([row.count(c) for row in inside],
                                                                   [len(row) for row in inside], **stats)
                                                   for c in CATEGORIES}})
    shifted, seen, text = Counter(), Counter(), {}
    for row in responses:
        for token, piece, rank in zip(row["token_ids"], row["tokens"], row["ranks"]):
            seen[token] += 1
            text[token] = piece
            if category(rank) == "shifted":
                shifted[token] += 1
    total = sum(shifted.values())
    tops = [{"token": text[t], "id": t, "count": k, "share_of_shifted": k / total, "occurrences": seen[t]}
            for t, k in sorted(shifted.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    self_check = ratio_block([sum(r == 1 for r in row["tuned_ranks"]) for row in responses], lengths, **stats)
    return {"responses": len(responses), "tokens": sum(lengths), "overall": overall, "by_position": by_position,
            "top_shifted_tokens": tops, "shifted_tokens": total, "tuned_self_rank1": self_check}


def study_prompts(config: SuperficialConfig, benchmark: Benchmark) -> list[dict]:
    """``[{"id", "messages"}]``: the ``prompts`` file's rows (any prompt format sftlab reads),
    else the held-out items' prompts as one user turn; with ``max_prompts``, that many spread
    evenly over them (the items come task by task: the first N would be one task's)."""
    if config.prompts:
        rows = [{"id": row.id, "messages": row.messages} for row in read_prompts(config.prompts)]
    else:
        rows = [{"id": item["id"], "messages": [Message("user", item["prompt"])]} for item in benchmark.items]
    count = min(config.max_prompts or len(rows), len(rows))
    return [rows[i * len(rows) // count] for i in range(count)]


def measure_shift(base, tuned, tokenizer, prompts: Sequence[dict], *, max_new_tokens: int,
                  batch_size: int) -> list[dict]:
    """The tuned model's greedy answer to every prompt, then each answer token's rank under
    the base and under the tuned model -> a row per prompt: ``id``, ``prompt`` (as
    rendered), ``response``, ``token_ids``, ``tokens`` (each token's text), ``ranks`` (base),
    ``tuned_ranks``."""
    generator = HFGenerator(tuned, tokenizer, batch_size=batch_size)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        for prompt, generation in zip(batch, generator.generate([p["messages"] for p in batch], sampling)):
            prompt_ids = prompt_to_ids(tokenizer, prompt["messages"])  # what the generator was given
            response = list(generation.token_ids)
            rows.append({"id": prompt["id"], "prompt": tokenizer.decode(prompt_ids), "response": generation.text,
                         "token_ids": response, "tokens": [tokenizer.decode([t]) for t in response],
                         "ranks": token_ranks(base, prompt_ids, response),
                         "tuned_ranks": token_ranks(tuned, prompt_ids, response)})
    return rows


def token_shift(config: SuperficialConfig, store: RunStore, benchmark: Benchmark, prompts: list[dict],
                reused: list[int]) -> dict:
    """Load (or train) the tuned model, measure the shift (cached beside the runs), summarise."""
    if config.tuned:
        run, name, adapter = None, config.tuned, None
        identity = model_fingerprint(config.tuned if config.tuned not in BUILTIN else resolve_model(config.tuned))
        _check_adapter_base(config.tuned, store.model_path)
    else:
        print(f"[token shift] the tuned model: a LoRA run on the {len(benchmark.pool)}-example pool", flush=True)
        run = store.train(benchmark.pool, config.seeds[0])
        name, adapter, identity = store.model_path, run["adapter"], run["key"]
    key = digest("shift", store.fingerprint, identity, [[p["id"], [(m.role, m.content) for m in p["messages"]]]
                                                        for p in prompts], config.response_tokens)
    path = store.root / f"shift-{key}.jsonl"
    if path.exists():
        reused[0] += 1
        rows = read_rows(path)
    else:
        print(f"      token shift: {len(prompts)} prompts, greedy answers of {name}, ranked by the base", flush=True)
        tokenizer = load_tokenizer(name, adapter=adapter)
        if tokenizer.get_vocab() != load_tokenizer(store.model_path).get_vocab():
            raise ConfigError(f"tuned: {name}'s tokenizer differs from model {store.model_path}'s; ranks need one "
                              "vocabulary (tune from the same model)")
        tuned = load_model(name, adapter=adapter)
        base = load_model(store.model_path)
        rows = measure_shift(base, tuned, tokenizer, prompts, max_new_tokens=config.response_tokens,
                             batch_size=config.eval_batch_size)
        write_jsonl(path, rows)
    summary = shift_summary(rows, config.position_buckets, config.top_tokens, seed=config.data_seed,
                            resamples=config.bootstrap_resamples)
    return {"tuned": config.tuned or "a LoRA run on the pool (the original variant, first seed)",
            "tuned_run": run_info(run) if run else None, "adapter": adapter,
            "prompts": config.prompts or "the held-out checkable items", "response_tokens": config.response_tokens,
            "rendering": "both models read the prompt rendered by the tuned model's chat template",
            "cache": str(path), **summary, "rows": rows}


def _check_adapter_base(tuned: str, model_path: str) -> None:
    """An adapter tuned from another base than ``model`` would rank against the wrong model."""
    split = split_adapter_run(tuned) if tuned not in BUILTIN else None
    if split is None:
        return
    base = adapter_base(split[1])
    try:
        same = resolve_model(base) == model_path
    except ModelNotFoundError:
        same = False
    if not same:
        raise ConfigError(f"tuned: the adapter {split[1]} was trained from {base}, not from model {model_path}; "
                          f"set model={base}")


# ---------------------------------------------------------------- (b) instruction variants

NUMBER = re.compile(r"-?\d+(\.\d+)?")
NUMBER_LIST = re.compile(r"-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?)+")


def output_space(answers: Sequence[str]) -> str:
    """The output-space sentence of a task, from its answers: numbers, lists, a small label
    set (sorted), or words (their count range).

    >>> output_space(["positive", "negative", "positive", "negative"])
    'Answer with one of: negative, positive.'
    >>> output_space(["12", "7"]), output_space(["1, 2, 3", "4, 5"])
    ('Answer with a number.', 'Answer with a list of numbers separated by commas.')
    >>> output_space(["red apple", "sun", "a b c"]), output_space(["x, y", "z, w, v"])
    ('Answer with 1 to 3 words.', 'Answer with a list of words separated by commas.')
    """
    answers = [a.strip() for a in answers]
    labels = sorted(set(answers))
    if all(NUMBER.fullmatch(a) for a in answers):
        return "Answer with a number."
    if all(NUMBER_LIST.fullmatch(a) or NUMBER.fullmatch(a) for a in answers):
        return "Answer with a list of numbers separated by commas."
    if len(labels) <= MAX_LABELS and len(answers) >= 2 * len(labels):
        return f"Answer with one of: {', '.join(labels)}."
    if all("," in a for a in answers):
        return "Answer with a list of words separated by commas."
    counts = [len(a.split()) for a in answers]
    low, high = min(counts), max(counts)
    if high == 1:
        return "Answer with one word."
    return f"Answer with {low} words." if low == high else f"Answer with {low} to {high} words."


def template_fields(template: str, text: str) -> dict[str, str] | None:
    """The field values that render ``template`` into ``text`` (None when it does not match).

    >>> template_fields("Give items {i} to {j} of this list: {items}", "Give items 2 to 3 of this list: a, b, c")
    {'i': '2', 'j': '3', 'items': 'a, b, c'}
    """
    pattern, names = "", []
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if name is not None:
            pattern += f"(?P={name})" if name in names else f"(?P<{name}>.+?)"
            names.append(name)
    match = re.fullmatch(pattern, text, flags=re.DOTALL)
    return match.groupdict() if match else None


def output_spaces(pool: Sequence[Conversation]) -> dict[str, str]:
    """task -> its output-space sentence, from the answers of the pool's examples of it."""
    answers: dict[str, list[str]] = {}
    for conversation in pool:
        answers.setdefault(_task(conversation), []).append(conversation.messages[-1].content)
    return {task: output_space(values) for task, values in sorted(answers.items())}


def simplify(conversation: Conversation, templates: Templates, spaces: Mapping[str, str]) -> Conversation:
    """The example with its prompt cut to the output space and the instance's input: the
    task's sentence, then each field value of the template on its own line."""
    task, user = _task(conversation), _user_index(conversation)
    index = (conversation.meta or {}).get("template")
    if task not in templates or not isinstance(index, int) or not 0 <= index < len(templates[task]):
        raise ConfigError(f"variants: simplified needs each example's template (meta.task and meta.template "
                          f"indexing the templates passed in); example {conversation.id} has task {task!r}, "
                          f"template {index!r}")
    fields = template_fields(templates[task][index], conversation.messages[user].content)
    if fields is None:
        raise ConfigError(f"variants: example {conversation.id}'s prompt does not match its template "
                          f"{templates[task][index]!r}; simplified cannot find its input")
    prompt = "\n".join([spaces[task], *fields.values()])
    return _with(conversation, user, prompt, "simplified")


def delude(pool: Sequence[Conversation], seed: int) -> list[Conversation]:
    """Every example's answer replaced by another instance's answer of the same task, drawn
    (seeded per task) from the task's answers that differ from its own; an example whose
    task has no other answer keeps its own."""
    answers: dict[str, list[str]] = {}
    for conversation in pool:
        answers.setdefault(_task(conversation), []).append(conversation.messages[-1].content)
    rngs = {task: random.Random(f"delusive:{seed}:{task}") for task in answers}
    out = []
    for conversation in pool:
        task, own = _task(conversation), conversation.messages[-1].content
        others = [a for a in answers[task] if a != own]
        wrong = rngs[task].choice(others) if others else own
        out.append(_with(conversation, len(conversation.messages) - 1, wrong, "delusive"))
    return out


def variant_pool(name: str, pool: Sequence[Conversation], templates: Templates | None, seed: int) -> list[Conversation]:
    """The training examples of one variant (the pool itself for ``original``)."""
    if name == "original":
        return list(pool)
    if name == "delusive":
        return delude(pool, seed)
    spaces = output_spaces(pool)
    return [simplify(c, templates or {}, spaces) for c in pool]


def _task(conversation: Conversation) -> str:
    task = (conversation.meta or {}).get("task")
    if not task:
        raise ConfigError(f"variants: simplified and delusive need each example's task in meta.task; example "
                          f"{conversation.id} has none")
    return task


def _user_index(conversation: Conversation) -> int:
    return max(i for i, m in enumerate(conversation.messages) if m.role == "user")


def _with(conversation: Conversation, index: int, content: str, variant: str) -> Conversation:
    messages = list(conversation.messages)
    messages[index] = replace(messages[index], content=content)
    return replace(conversation, messages=messages, meta={**(conversation.meta or {}), "variant": variant})


def measure_variants(config: SuperficialConfig, store: RunStore, benchmark: Benchmark,
                     pools: dict[str, list[Conversation]]) -> dict:
    """Train every (variant, seed), evaluate each on the held-out items, pair with original."""
    stats = {"seed": config.data_seed, "resamples": config.bootstrap_resamples}
    results, rows = {}, []
    groups = sorted({item.get("group", "") for item in benchmark.items} - {""})
    for variant, pool in pools.items():
        print(f"[variant {variant}] {len(config.seeds)} seed(s)", flush=True)
        runs = [store.train(pool, seed) for seed in config.seeds]
        results[variant] = [store.evaluate(benchmark, run) for run in runs]
        changed = sum(a.messages != b.messages for a, b in zip(pool, benchmark.pool))
        rows.append({"variant": variant, "score": score_block(results[variant], **stats),
                     "by_group": {g: score_block([[r for r in rs if r.get("group") == g] for rs in results[variant]],
                                                 **stats) for g in groups},
                     "changed_examples": changed, "examples": len(pool), "runs": [run_info(r) for r in runs],
                     "example": {"prompt": pool[0].messages[_user_index(pool[0])].content,
                                 "answer": pool[0].messages[-1].content}})
    base = score_block([store.evaluate(benchmark, None)], **stats) if config.include_base else None
    differences = {v: paired_difference(results[v], results["original"], **stats) for v in pools if v != "original"}
    return {"pool_size": len(benchmark.pool), "eval_items": len(benchmark.items), "seeds": config.seeds,
            "output_spaces": output_spaces(benchmark.pool) if "simplified" in pools else None,
            "rows": rows, "base": base,
            "differences_vs_original": {v: {**d, "verdict": verdict(d)} for v, d in differences.items()}}


# ---------------------------------------------------------------- the study

def run_superficial(config: SuperficialConfig, benchmark: Benchmark, templates: Templates | None = None) -> dict:
    """Measure the token shift and/or train and compare the variants; writes study.json, the
    plots, the per-response ranks (shift_responses.jsonl) and report.html."""
    check_config(config)
    pools = {v: variant_pool(v, benchmark.pool, templates, config.data_seed) for v in config.variants}
    prompts = study_prompts(config, benchmark) if config.token_shift else []
    clock = Clock()
    out, store = open_study(config, "superficial")
    reused = [0]
    try:
        shift = token_shift(config, store, benchmark, prompts, reused) if config.token_shift else None
        variants = measure_variants(config, store, benchmark, pools) if pools else None
    finally:
        store.release()
    if shift is not None:
        write_jsonl(out / "shift_responses.jsonl", shift.pop("rows"))
        shift["responses_file"] = str(out / "shift_responses.jsonl")
    summary = {
        "study": "superficial", "model": config.model, "benchmark": benchmark.name, "metric": benchmark.metric,
        "token_shift": shift, "variants": variants,
        "jobs": {"trained": store.trained, "reused": store.reused + reused[0]},
        "timings_s": {"total": clock.seconds()}, "config": asdict(config),
    }
    charts = {}
    if shift is not None:
        charts["shift_by_position.png"] = shift_chart(shift)
        charts["top_shifted_tokens.png"] = tokens_chart(shift["top_shifted_tokens"])
    if variants is not None:
        charts["score_by_variant.png"] = variants_chart(variants, benchmark.metric)
    report = write_outputs(out, summary, charts, _sections(summary), f"sftlab study superficial: {config.model}")
    if shift is not None:
        print("token shift: " + ", ".join(f"{c} {pct(shift['overall'][c])}" for c in CATEGORIES)
              + f" of {shift['tokens']} tokens in {shift['responses']} responses")
    for v, d in (variants or {}).get("differences_vs_original", {}).items():
        print(f"{v} - original: {signed_pct(d)} ({d['verdict']})")
    print(f"report: {report}")
    return summary


# ---------------------------------------------------------------- report and charts

def _sections(summary: dict) -> list[str]:
    parts = []
    shift = summary["token_shift"]
    if shift is not None:
        head = "".join(f"<th>{c}</th>" for c in CATEGORIES)
        overall = "".join(f"<td>{pct(shift['overall'][c])}</td>" for c in CATEGORIES)
        buckets = "".join(f"<tr><td>{b['positions']}</td><td>{b['unshifted']['tokens']}</td>"
                          + "".join(f"<td>{pct(b[c])}</td>" for c in CATEGORIES) + "</tr>" for b in shift["by_position"])
        tokens = "".join(f"<tr><td><code>{html.escape(json.dumps(t['token']))}</code></td><td>{t['count']}</td>"
                         f"<td>{100 * t['share_of_shifted']:.1f}%</td><td>{t['occurrences']}</td></tr>"
                         for t in shift["top_shifted_tokens"])
        parts.append(
            f"<h2>Token-distribution shift (URIAL)</h2><p>Tuned model: {html.escape(str(shift['tuned']))}; prompts: "
            f"{html.escape(str(shift['prompts']))} ({shift['responses']} greedy responses, {shift['tokens']} tokens, "
            f"at most {shift['response_tokens']} each, end-of-turn included). Each token's rank under the untuned "
            f"model given the same prefix ({html.escape(shift['rendering'])}): unshifted = rank 1, marginal = 2-3, "
            f"shifted = above 3. Brackets: bootstrap 95% intervals over responses. Check: the tuned model ranks its "
            f"own tokens first in {pct(shift['tuned_self_rank1'])}.</p>"
            f"<table><tr><th>all positions</th>{head}</tr><tr><td>{shift['tokens']} tokens</td>{overall}</tr></table>"
            f"<table><tr><th>positions</th><th>tokens</th>{head}</tr>{buckets}</table>"
            f"<p>Most often shifted tokens ({shift['shifted_tokens']} shifted in all):</p>"
            f"<table><tr><th>token</th><th>shifted</th><th>share of shifted</th><th>occurrences</th></tr>{tokens}</table>")
    variants = summary["variants"]
    if variants is not None:
        differences = variants["differences_vs_original"]
        rows = "".join(
            f"<tr><td>{r['variant']}</td><td>{pct(r['score'])}</td><td>{r['score']['n']}</td>"
            + "".join(f"<td>{pct(b)}</td>" for b in r["by_group"].values())
            + (f"<td>{signed_pct(differences[r['variant']])} ({differences[r['variant']]['verdict']})</td>"
               if r["variant"] in differences else "<td>baseline</td>")
            + f"<td>{r['changed_examples']} / {r['examples']}</td>"
            f"<td><code>{html.escape(r['example']['prompt'])}</code> &rarr; <code>{html.escape(r['example']['answer'])}"
            f"</code></td></tr>" for r in variants["rows"])
        groups = "".join(f"<th>{html.escape(g)}</th>" for g in (variants["rows"][0]["by_group"] if variants["rows"] else []))
        base = f" Untuned model: {pct(variants['base'])}." if variants["base"] else ""
        spaces = "".join(f"<li>{html.escape(t)}: <code>{html.escape(s)}</code></li>"
                         for t, s in (variants["output_spaces"] or {}).items())
        parts.append(
            f"<h2>Instruction variants (Kung &amp; Peng)</h2><p>LoRA runs on the {variants['pool_size']} seen-task "
            f"examples with the original instructions, simplified ones (the output space only, then the input) and "
            f"delusive answers (another instance's answer of the same task), seeds {variants['seeds']}; all "
            f"evaluated on the same {variants['eval_items']} held-out items with their original prompts "
            f"({summary['metric']}). Differences: paired over items.{base}</p>"
            f"<table><tr><th>variant</th><th>score</th><th>items</th>{groups}<th>minus original (paired)</th>"
            f"<th>examples changed</th><th>first example</th></tr>{rows}</table>"
            + (f"<p>Output spaces of the simplified instructions:</p><ul>{spaces}</ul>" if spaces else ""))
    return parts


def shift_chart(shift: dict) -> bytes:
    """Grouped bars per position bucket (and all positions): the three fractions, 95% intervals."""
    plt = pyplot()
    groups = [("all", shift["overall"])] + [(b["positions"], b) for b in shift["by_position"]]
    figure, axes = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) + 1.5), 3.6))
    width = 0.27
    for k, (c, colour) in enumerate(zip(CATEGORIES, ("#2a7ab9", "#e0a030", "#c62828"))):
        means = [100 * (g[c]["mean"] if g[c]["n"] else 0.0) for _, g in groups]
        errors = [[max(0.0, m - 100 * g[c]["low"]) if g[c]["n"] else 0.0 for m, (_, g) in zip(means, groups)],
                  [max(0.0, 100 * g[c]["high"] - m) if g[c]["n"] else 0.0 for m, (_, g) in zip(means, groups)]]
        axes.bar([i + (k - 1) * width for i in range(len(groups))], means, width, yerr=errors, capsize=3,
                 color=colour, label=c)
    axes.set_xticks(range(len(groups)), [f"{label}\n({g['unshifted']['tokens']} tok)" for label, g in groups])
    axes.set_xlabel("position of the token in the response")
    axes.set_ylabel("tokens (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return png(figure)


def tokens_chart(tops: list[dict]) -> bytes:
    """Horizontal bars: how often each of the most often shifted tokens was shifted."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 0.28 * max(1, len(tops)) + 1.2))
    axes.barh(range(len(tops)), [t["count"] for t in tops], color="#c62828")
    axes.set_yticks(range(len(tops)), [json.dumps(t["token"]) for t in tops], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("times shifted (rank > 3 under the untuned model)")
    axes.grid(axis="x", alpha=0.3)
    return png(figure)


def variants_chart(variants: dict, metric: str) -> bytes:
    """Score per variant with 95% intervals, seeds as dots, the untuned model dashed."""
    plt = pyplot()
    rows = variants["rows"]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1.5), 3.6))
    means = [100 * r["score"]["mean"] for r in rows]
    errors = [[m - 100 * r["score"]["low"] for m, r in zip(means, rows)],
              [100 * r["score"]["high"] - m for m, r in zip(means, rows)]]
    axes.bar(range(len(rows)), means, yerr=errors, capsize=3, color="#2a7ab9")
    for i, r in enumerate(rows):
        axes.scatter([i] * len(r["score"]["seeds"]), [100 * s["mean"] for s in r["score"]["seeds"]], s=10,
                     color="#333333", zorder=3)
    if variants["base"] is not None:
        axes.axhline(100 * variants["base"]["mean"], linestyle="--", color="#999999", label="untuned")
        axes.legend(fontsize=8)
    axes.set_xticks(range(len(rows)), [r["variant"] for r in rows])
    axes.set_ylabel(f"{metric} (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    return png(figure)
