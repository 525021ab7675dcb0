"""``sftlab study size-sweep | compare-data | superficial | imitation | helm``: the survey's
analyses as experiments.

The CLI gives every study the quickstart's exactly-checkable tasks as its ``Benchmark``:
the training pool is the seen tasks through their training templates, the evaluation the
held-out instances (seen tasks through held-out templates, and unseen tasks), scored by
exact match. (``sftlab.study`` sits beside ``sftlab.quickstart`` in the stage order, so
the two are joined here, above both.)
"""
from __future__ import annotations

from dataclasses import asdict

from sftlab.cli.options import add_config_arguments, config_from_args
from sftlab.study.config import (CompareDataConfig, HelmConfig, ImitationConfig, SizeSweepConfig, StudyConfig,
                                  SuperficialConfig)

DESCRIPTION = """Experiments on what instruction tuning does, each from one command. A study trains
(LoRA, through `sftlab train`) and evaluates many runs, one at a time, and writes study.json (every
number with its 95% interval and n, and the run directories), PNG plots and report.html into its
directory. Runs and evaluations are kept under a hash of what produced them: run the same command
again and it continues where it stopped, training nothing it already has."""

SIZE_SWEEP = """Score against training-set size (LIMA; Gupta et al.): LoRA runs on nested random subsets
n_1 < n_2 < ... of the checkable-task pool (for each seed the n_1 examples are among the n_2), all
evaluated on the same held-out items; plots score vs n with intervals and reports the smallest n whose
score reaches the interval of the largest n.

Real configuration (default model, 2 cores): sizes 32, 128, 512 x seeds 0, 1; about 20-25 minutes."""

COMPARE_DATA = """Data sources at an equal budget of trained tokens (or examples), the same model and
evaluation: a ranked table with intervals and each source's paired difference from the baseline
(bootstrap over the same items). Sources: random, longest (responses), ifd (instruction-following
difficulty, Li et al. 2024, under the model to be tuned), judge (the examples an OpenAI-compatible
judge rates highest for accuracy, AlpaGasus: judge=MODEL judge_base_url=URL) or a data file. Answers "is the selected k
better than a random k of the same size" with the paired interval.

Real configuration (default model, 2 cores): random, longest, ifd, k=128, seeds 0, 1; about 15-20 minutes."""

HELM = """HELM-style multi-metric table (Liang et al. 2022): one or more models side by side (`models: [default,
runs/x]`, as `sftlab eval` takes them) on scenarios (gsm8k, bbh_mc: BBH multiple choice by log-likelihood,
checkable: the quickstart's tasks, or any `sftlab eval` task), each with accuracy, calibration (ECE, selective
accuracy at 10% coverage), robustness (the paired drop under prompt rewordings and under typos) and
efficiency (prompt and completion tokens, tokens/s, seconds per item). Nothing is trained.

Real configuration (examples/studies/helm.yaml; default model, 2 cores): gsm8k 20 items, bbh_mc 2x20, checkable."""

SUPERFICIAL = """Is instruction tuning mostly style? (a) Token-distribution shift (URIAL, Lin et al. 2023):
the tuned model (`tuned: PATH`, or a LoRA run on the checkable-task pool) answers prompts greedily, and each
answer token is ranked under the untuned model given the same prefix (one teacher-forced pass, the tuned
model's chat template for both): fractions unshifted (rank 1), marginal (2-3) and shifted (>3) with
intervals over responses, by position in the response, and the most often shifted tokens. (b) Kung & Peng
2023: LoRA runs on the seen tasks with the original instructions, simplified ones (only the output space,
e.g. "Answer with a number.", and the input) and delusive answers (another instance's answer of the same
task), evaluated on the same held-out items, with paired differences from original.

Real configuration (examples/studies/superficial.yaml; default model, 2 cores): 128 prompts, a 312-example
pool x 3 variants x seeds 0, 1; about 12 minutes (6.5 measured with seed 0 alone)."""

IMITATION = """Imitating a stronger model copies its style, not its capability (Gudibande et al. 2023): a
teacher (`teacher: ""`, a LoRA run on the whole checkable-task pool; a model run locally; or a served one with
teacher_base_url) answers the training prompts of the supported tasks, and students are LoRA runs on nested
subsets of those answers (imitation_sizes). Reported: accuracy of the untuned model, the teacher and each
student on the supported and the unsupported tasks (held-out items), with paired differences, and with a
pairwise judge (judge=MODEL judge_base_url=URL) each student's win rate against the teacher, both orders.

Real configuration (examples/studies/imitation.yaml; default model, 2 cores): teacher on a 416-example pool,
192 supported prompts, sizes 32, 128, seed 0, no judge; about 10-15 minutes."""

STUDIES = {
    "size-sweep": (SizeSweepConfig, SIZE_SWEEP, "sftlab study size-sweep --fast --model tiny\n"
                   "  sftlab study size-sweep sizes=[32,128,512] seeds=[0,1] threads=2"),
    "compare-data": (CompareDataConfig, COMPARE_DATA, "sftlab study compare-data --fast --model tiny\n"
                     "  sftlab study compare-data sources=[random,ifd] k=128 threads=2"),
    "helm": (HelmConfig, HELM, "sftlab study helm --fast --model tiny data_dir=../shared/data\n"
             "  sftlab study helm examples/studies/helm.yaml models=[default,runs/lora1] threads=2"),
    "superficial": (SuperficialConfig, SUPERFICIAL, "sftlab study superficial --fast --model tiny\n"
                    "  sftlab study superficial examples/studies/superficial.yaml tuned=runs/lora1 variants=[]"),
    "imitation": (ImitationConfig, IMITATION, "sftlab study imitation --fast --model tiny\n"
                  "  sftlab study imitation examples/studies/imitation.yaml judge=MODEL judge_base_url=URL"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="the survey's analyses: size-sweep, compare-data, superficial, "
                                   "imitation, helm",
                                   description=DESCRIPTION)
    studies = parser.add_subparsers(dest="study", metavar="STUDY")
    for name, (config_class, description, examples) in STUDIES.items():
        sub = studies.add_parser(name, help=description.split(":")[0], description=description)
        sub.add_argument("config", nargs="?", metavar="CONFIG.yaml",
                         help="YAML file with any of the keys below (optional: all keys have defaults)")
        add_config_arguments(sub, config_class, config_option=False, flags={
            "model": "--model", "output_dir": ("-o", "--output-dir"), "fast": "--fast"},
            epilog=f"examples:\n  {examples}")
        sub.add_argument("--show-config", action="store_true", help="print the settings and exit")
        sub.set_defaults(handler=run, study_name=name)
    parser.set_defaults(handler=lambda args: parser.print_help())


def run(args) -> int:
    config_class = STUDIES[args.study_name][0]
    config_path = args.config
    if config_path is not None and "=" in config_path:  # only overrides were given
        args.overrides, config_path = [config_path] + list(args.overrides), None
    config = config_from_args(config_class, args, config_file=config_path)
    if args.show_config:
        for key, value in asdict(config).items():
            print(f"{key}: {value}")
        return 0
    benchmark = checkable_benchmark(config)
    if args.study_name == "helm":
        from sftlab.study.helm import run_helm  # lazy: torch and the models

        run_helm(config, benchmark)
        return 0
    if args.study_name == "imitation":
        from sftlab.study.imitation import run_imitation  # lazy: as above

        run_imitation(config, benchmark)
        return 0
    if args.study_name == "superficial":
        from sftlab.study.superficial import run_superficial  # lazy: as above

        run_superficial(config, benchmark, checkable_templates())
        return 0
    if args.study_name == "size-sweep":
        from sftlab.study.size_sweep import run_size_sweep  # lazy: torch and the trainer

        run_size_sweep(config, benchmark)
    else:
        from sftlab.study.compare_data import run_compare_data  # lazy: as above

        run_compare_data(config, benchmark)
    return 0


def checkable_benchmark(config: StudyConfig):
    """The quickstart's tasks as a study ``Benchmark`` (deterministic from ``data_seed``)."""
    from sftlab.quickstart.data import build  # lazy: keeps `sftlab study --help` light
    from sftlab.quickstart.tasks import exact_match
    from sftlab.study.runs import Benchmark

    built = build(config.data_seed, config.train_per_task, config.eval_per_task)
    return Benchmark("checkable tasks (quickstart)", built.train, [item.__dict__ for item in built.eval],
                     lambda response, answer: float(exact_match(response, answer)))


def checkable_templates() -> dict[str, tuple[str, ...]]:
    """Each quickstart task's templates, which its examples' ``meta.template`` indexes."""
    from sftlab.quickstart.tasks import TASKS  # lazy: as checkable_benchmark

    return {name: task.templates for name, task in TASKS.items()}
