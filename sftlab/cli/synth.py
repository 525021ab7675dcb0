"""``sftlab synth NAME CONFIG.yaml [key=value ...]``: run a data-synthesis pipeline."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, fields

from sftlab.errors import DataError

EPILOG = """pipelines:
  distill        a teacher answers your instructions (Alpaca / GPT-4-LLM; Orca system prompts)
  self-instruct  grow tasks from the 175 seed tasks (Wang et al. 2022)
  evol-instruct  evolve instructions in depth and breadth (WizardLM)
  self-chat      the teacher plays both sides from seed topics (Baize)
  back-translate instruction back-translation with self-curation (Li et al. 2023)
  spin           self-play fine-tuning against the model's own generations (Chen et al. 2024)

The teacher is any OpenAI-compatible endpoint (teacher.base_url, teacher.model, API key from
the variable named by teacher.api_key_env) or `teacher.base_url=local` to run teacher.model
in-process. Output is append-only JSONL: rerun the same command to resume after an
interruption. Records are keyed by each input row's own `id`, else by its content, so a
reordered, prepended or renamed input file resumes too. A report of what was written and
rejected lands in OUTPUT.report.json.

example:
  sftlab serve default --port 8000 &
  sftlab synth self-instruct seed_tasks=../shared/data/self_instruct/seed_tasks.jsonl num_instructions=50 \\
      output=data/self_instruct.jsonl teacher.base_url=http://127.0.0.1:8000/v1 teacher.cache_dir=.cache/teacher
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="synthesise instruction data with a teacher (distill, self-instruct, evol, ...)",
        description="Run a data-synthesis pipeline against a teacher model.", epilog=EPILOG + _keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="pipeline name (see below)")
    parser.add_argument("config", nargs="?", help="YAML config file (optional: keys can be given as overrides)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. teacher.model=gpt-4o-mini")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(handler=run, parser=parser)


def _keys_help() -> str:
    """Every pipeline's keys with their docstrings, for the epilog."""
    from sftlab.config import format_field_docs  # lazy, as in run: only `sftlab synth` pays
    from sftlab.synth import PIPELINES

    return "".join(f"\n{format_field_docs(PIPELINES.get(name)[0], title=f'{name} keys:')}"
                   for name in PIPELINES.names())


def run(args) -> int:
    # imported here, not at the top: `sftlab --help` must not load the pipelines and their models
    import yaml

    from sftlab.config import load_config
    from sftlab.synth import PIPELINES

    if not args.name:
        args.parser.print_help()
        return 0
    config_class, run_pipeline = PIPELINES.get(args.name)
    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:  # no YAML file, only overrides
        config_path, overrides = None, [config_path] + overrides
    config = load_config(config_class, config_path, overrides)
    if args.show_config:
        print(yaml.safe_dump(asdict(config), sort_keys=False))
        return 0
    try:
        report = run_pipeline(config)
    except DataError as error:
        raise _naming_the_key(error, config) from None
    saved = report.save(config.output, config)
    print(report.summary())
    print(f"output: {config.output}\nreport: {saved}")
    return 0


def _naming_the_key(error, config):
    """``error`` with, for an input file that does not exist, the key that names it in the
    hint: ``instructions.jsonl: file not found`` alone does not say to set ``prompts=FILE``."""
    found = [f for f in fields(config) if isinstance(getattr(config, f.name), str)
             and error.file is not None and getattr(config, f.name) == error.file]
    if error.reason != "file not found" or not found:
        return error
    key = found[0]
    if key.default is not MISSING and key.default == error.file:
        hint = f"set {key.name}=FILE ({error.file} is only the default of {key.name})"
    else:
        hint = f"{key.name}={error.file} names it"
    hint += f"; {error.hint}" if error.hint else ""
    return DataError(error.message, file=error.file, line=error.line, index=error.index, field=error.field,
                     hint=hint, reason=error.reason)
