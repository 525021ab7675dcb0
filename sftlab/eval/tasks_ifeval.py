"""The IFEval task: 541 prompts with verifiable instructions, zero-shot, chat prompt.

Data: ``ifeval/input_data.jsonl`` under ``--data-dir`` (or ``--tasks ifeval=PATH``), rows
``{"key", "prompt", "instruction_id_list", "kwargs"}`` as released by the authors.
Each sample's ``extracted`` keeps the per-instruction results, so ``aggregate`` pools
instructions across prompts exactly as the reference report does.

Metrics: ``prompt_level_strict_acc``, ``inst_level_strict_acc``,
``prompt_level_loose_acc``, ``inst_level_loose_acc`` (see ``sftlab.eval.ifeval.score``).
"""
from __future__ import annotations

from typing import Any

from sftlab.errors import DataError
from sftlab.eval.base import TASKS, GenerationTask, Sample, read_task_rows
from sftlab.eval.ifeval.score import aggregate, score_prompt
from sftlab.infer.base import SamplingConfig
from sftlab.types import Message


@TASKS.register("ifeval")
class IFEval(GenerationTask):
    """Instruction following (Zhou et al. 2023), scored by the 25 rule-based checkers."""

    name = "ifeval"
    data_file = "ifeval/input_data.jsonl"
    # long answers are common (essays of 300+ words); greedy like the reference runs
    sampling = SamplingConfig(max_new_tokens=1280, temperature=0.0)

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        if data_path is None:
            raise DataError("task 'ifeval' needs its data",
                            hint="pass --data-dir DIR with ifeval/input_data.jsonl, "
                                 "or --tasks ifeval=PATH")
        rows = read_task_rows(data_path)
        for index, row in enumerate(rows):
            for field in ("prompt", "instruction_id_list", "kwargs"):
                if field not in row:
                    raise DataError("missing field", file=str(data_path), index=index, field=field)
        return [{**row, "id": str(row.get("key", index))} for index, row in enumerate(rows)]

    def prompt(self, doc: dict[str, Any]) -> list[Message]:
        return [Message("user", doc["prompt"])]

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        """-> ({"instruction_id_list", "strict", "loose"}, per-prompt metrics)."""
        result = score_prompt(doc, response or "")
        strict, loose = result["strict"], result["loose"]
        scores = {
            "prompt_level_strict_acc": float(all(strict)),
            "inst_level_strict_acc": sum(strict) / len(strict),
            "prompt_level_loose_acc": float(all(loose)),
            "inst_level_loose_acc": sum(loose) / len(loose),
        }
        extracted = {"instruction_id_list": doc["instruction_id_list"], **result}
        return extracted, scores

    def aggregate(self, samples: list[Sample]) -> dict[str, float]:
        """Prompt-level = mean over prompts; instruction-level = pooled over instructions
        (not the mean of per-prompt fractions)."""
        return aggregate(
            {"strict": sample.extracted["strict"], "loose": sample.extracted["loose"]}
            for sample in samples
        )
