# Paths, input functions and config helpers shared by every rule file (no rules here).
import errno
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake_interface_common.exceptions import ApiError

from fashionblip2.cluster import (
    JobRequest,
    cancel_and_wait,
    device_conflicts,
    live_jobs,
    preflight,
    read_cluster,
    run_key,
    runtime_problem,
    stop_hook,
)
import fashionblip2.config as cfg
from fashionblip2.config import (
    annotation_answer_settings,
    annotation_job_options,
    as_json,
    runtime_minutes,
    training_result_settings,
    training_job_options,
    uses_api,
)
from fashionblip2.datasets.scores import SCORES
from fashionblip2.pairing.embedding_file import shard_bounds
from fashionblip2.sources.manifest import count_for_pairing, fashioniq_val_images

SYNTHETIC_WORLD = "data/synthetic/world"
# A source whose root is "download" is fetched here from the URLs in downloads.files.<source>.
DOWNLOADED_SOURCE = "data/downloaded/{source}"
# The ground truth of the synthetic world. Only evaluation rules may take it as input: a rule that
# builds the dataset or trains a model must never see it (tests/test_workflow.py checks this).
GROUND_TRUTH = "data/synthetic/ground_truth.parquet"

MANIFEST = "data/manifest/images.parquet"
MANIFEST_TRIPLETS = "data/manifest/fashioniq_triplets.parquet"
MANIFEST_REPORT = "data/manifest/report.json"
MANIFEST_ISSUES = "data/manifest/issues.tsv"

# Shards keep stable names ({shard} over range(shards)), so a preempted shard reruns alone.
EMBEDDING_SHARD = "data/embeddings/shards/{shard}.npz"
EMBEDDINGS = "data/embeddings/images.npz"
EMBEDDINGS_REPORT = "data/embeddings/report.json"
PAIRS = "data/pairs/pairs.parquet"
PAIRS_REPORT = "data/pairs/report.json"
CAPTION_SHARD = "data/annotation/captions/{shard}.parquet"
CAPTIONS = "data/annotation/captions.parquet"
CAPTIONS_REPORT = "data/annotation/captions_report.json"
MODIFICATION_SHARD = "data/annotation/modifications/{shard}.parquet"
MODIFICATIONS = "data/annotation/modifications.parquet"
MODIFICATIONS_REPORT = "data/annotation/modifications_report.json"
PILOT_PAIRS = "data/pilot/pairs.parquet"
PILOT_CAPTIONS = "data/pilot/captions.parquet"
PILOT_MODIFICATIONS = "data/pilot/modifications.parquet"
# openai-batch's record of its batches, one per shard: not a Snakemake output, since Snakemake removes
# a failed job's outputs, and this file is what lets the retry of a failed job pay for nothing again.
CAPTION_BATCHES = "data/annotation/captions/{shard}.batches.json"
MODIFICATION_BATCHES = "data/annotation/modifications/{shard}.batches.json"
PILOT_CAPTION_BATCHES = "data/pilot/captions.batches.json"
PILOT_MODIFICATION_BATCHES = "data/pilot/modifications.batches.json"


def log_file(rule, name=None, suffix=".log"):
    """Every log path of the workflow, from this one place: logs/<rule>/<name><suffix>, where name is
    the job's wildcards ("{shard}", "{stage}_{variant}_seed{seed}") or the rule's own name for a rule that runs
    once. A job's other log files (annotation failures) take a suffix."""
    return f"logs/{rule}/{name or rule}{suffix}"


def table_files(stem, *, tex=False, sections=()):
    """Every file of one table, declared here once: <stem>.md (its report item), .csv, .tex if it has
    one, and <stem>_<section>.csv per extra section. The rules pass each to the script by name."""
    files = {"md": f"{stem}.md", "csv": f"{stem}.csv"}
    if tex:
        files["tex"] = f"{stem}.tex"
    return files | {name: f"{stem}_{name}.csv" for name in sections}


# The leakage check (rules/leakage.smk): the evaluation images pairing does not embed, the check's
# summary (an input of the facap rule), every matched pair, and the report.
HELDOUT_EMBEDDINGS = "data/embeddings/heldout.npz"
LEAKAGE = "data/leakage/leakage.json"
LEAKAGE_MATCHES = "data/leakage/matches.csv"
LEAKAGE_REPORT = "results/leakage/report.md"
# The triplet scores (rules/scores.smk): a score on every annotated triplet, FACap's filtered
# release and its filter report, and the scores' validity against the synthetic world's truth.
TRIPLET_SCORES = "data/scores/triplets.parquet"
FACAP_FILTERED = "data/facap_filtered"
FILTER_REPORT = "results/scores/filters.md"
SCORE_VALIDITY_FILES = table_files("results/scores/validity")
TRUTH_LABELS = "results/scores/truth_labels.parquet"
SCORE_FIGURES = {"distributions": "results/scores/distributions.png", "flagged": "results/scores/flagged.png"}
PILOT_FILES = table_files("results/tables/pilot")
PILOT_TABLE = PILOT_FILES["md"]
FACAP = "data/facap"
ENHFASHIONIQ = "data/enhfashioniq"
TABLE1_FILES = table_files("results/tables/table1")
TABLE1 = TABLE1_FILES["md"]
QUALITY_SAMPLE = "results/quality/sample"
QUALITY_KIT = "results/quality/kit"
QUALITY_AUTOMATIC = "results/quality/automatic"
TABLE2_FILES = table_files("results/tables/table2", sections=["agreement"])
TABLE2 = TABLE2_FILES["md"]

TRAINED_TOKENIZER = "models/tokenizer"
TRAINED_BACKBONE = "models/backbone"
# One model per (stage, variant, seed): experiments.seeds.
MODEL = "models/{stage}/{variant}/seed{seed}"
EVALUATION = "results/eval/{stage}/{variant}/seed{seed}/{dataset}.json"
RANKINGS = "results/eval/{stage}/{variant}/seed{seed}/{dataset}_rankings.parquet"
# Written by the training run itself: its FashionIQ-val curve, and the best point of it (SPRC's
# --save-best choice) as an evaluation file of the same format.
VALIDATION_CURVE = "results/eval/{stage}/{variant}/seed{seed}/validation.json"
BEST_EVALUATION = "results/eval/{stage}/{variant}/seed{seed}/fashioniq_best.json"
BEST_RANKINGS = "results/eval/{stage}/{variant}/seed{seed}/fashioniq_best_rankings.parquet"
# The search index of a (stage, variant): built from the first seed's model.
SEARCH_INDEX = "results/index/{stage}/{variant}"
EXPERIMENT_TABLE_FILES = table_files("results/tables/table{number}", tex=True, sections=["differences"])
TABLES = {n: EXPERIMENT_TABLE_FILES["md"].format(number=n) for n in (3, 4, 5, 6)}
FIGURE5_FILES = {
    "png": "results/figures/figure5.png",
    "csv": "results/figures/figure5.csv",
    "differences": "results/figures/figure5_differences.csv",
}
FIGURE5 = FIGURE5_FILES["png"]
FIGURE6 = "results/figures/figure6.png"
EVAL_DATASETS = ["fashioniq", "enhfashioniq"]


def enabled_sources():
    return cfg.enabled_sources(config["sources"])


def uses_synthetic_world():
    return any(spec.get("root") == "synthetic" for spec in enabled_sources().values())


def source_root(name, root):
    return cfg.source_root(name, root, SYNTHETIC_WORLD, DOWNLOADED_SOURCE)


def resolved_sources():
    return cfg.resolved_sources(config["sources"], SYNTHETIC_WORLD, DOWNLOADED_SOURCE)


def manifest_inputs(wildcards):
    """The generated world, the downloaded sources, or the user's own folders and catalogue (so a
    missing one fails early)."""
    inputs = [SYNTHETIC_WORLD] if uses_synthetic_world() else []
    for name, spec in enabled_sources().items():
        if name == "catalogue":
            inputs.append(spec["path"])
        elif spec.get("root") != "synthetic":
            inputs.append(source_root(name, spec["root"]))
    return inputs


def download_entries(wildcards):
    return config["downloads"]["files"].get(wildcards.source, [])


def data_kind():
    """Recorded in reports: the synthetic world, or real data."""
    return "synthetic" if uses_synthetic_world() else "real"


def embedding_shards():
    return expand(EMBEDDING_SHARD, shard=range(config["embedding"]["shards"]))


def annotation_shards(pattern):
    return expand(pattern, shard=range(config["annotation"]["shards"]))


def heldout_splits():
    return cfg.heldout_splits(config)


def leakage_embeddings():
    """Pairing's vectors, and the held-out images' when pairing does not embed them all."""
    return [EMBEDDINGS, HELDOUT_EMBEDDINGS] if heldout_splits() else [EMBEDDINGS]


def fashioniq_root():
    """The FashionIQ folder (for reading its annotation files)."""
    return source_root("fashioniq", config["sources"]["fashioniq"]["root"])


def fashioniq_input():
    """The input of rules that read FashionIQ files (the generated world, the download, or the user's folder)."""
    return SYNTHETIC_WORLD if config["sources"]["fashioniq"]["root"] == "synthetic" else fashioniq_root()


def quality_sample_inputs(wildcards):
    """The datasets sampled for Table 2 (quality.datasets), and the manifest."""
    chosen = config["quality"]["datasets"]
    inputs = {"manifest": MANIFEST}
    if "facap" in chosen:
        inputs["facap"] = FACAP
    if "enhfashioniq" in chosen:
        inputs["enhfashioniq"] = ENHFASHIONIQ
    if "fashioniq" in chosen:
        inputs["fashioniq"] = fashioniq_input()
    return inputs


def quality_sample_arguments(wildcards, input):
    chosen = config["quality"]["datasets"]
    args = []
    if "facap" in chosen:
        args.append(f"--facap {input.facap}")
    if "enhfashioniq" in chosen:
        args.append(f"--enhfashioniq {input.enhfashioniq}")
    if "fashioniq" in chosen:
        args.append(f"--fashioniq-root {fashioniq_root()}")
    return " ".join(args)


def uses_automatic_annotators():
    return not config["quality"]["annotations"]


def quality_annotations():
    """The score files for Table 2: the people's (quality.annotations), or on the synthetic world the
    automatic annotators'. Real data without score files cannot make Table 2: say what to do."""
    if not uses_automatic_annotators():
        return config["quality"]["annotations"]
    if data_kind() != "synthetic":
        raise ValueError(
            "quality.annotations lists no score files, and automatic annotators need the synthetic world: "
            f"send {QUALITY_KIT}/ to your annotators, then list their exported CSVs in quality.annotations"
        )
    return [QUALITY_AUTOMATIC]


def quality_targets():
    """The kit always; Table 2 when it can be made (score files listed, or the synthetic world)."""
    targets = [QUALITY_KIT]
    if not uses_automatic_annotators() or data_kind() == "synthetic":
        targets.append(TABLE2)
    return targets


def rule_spec(rule_name):
    """`resources.<rule>` from config: the one place a rule's numbers live."""
    spec = config["resources"].get(rule_name)
    if spec is None:
        raise WorkflowError(f"resources.{rule_name} is missing from the config (every rule has an entry)")
    return spec


def rule_threads(rule_name):
    return rule_spec(rule_name)["threads"]


def rule_gpus(rule_name):
    """GPUs per job of a rule: resources.<rule>.gpu, or none at all when cluster.use_gpus is false."""
    return rule_spec(rule_name).get("gpu", 0) if config["cluster"]["use_gpus"] else 0


# What the preflight read of the cluster: each runtime computed from a job's inputs is checked against
# it when the job is submitted (filled only on a SLURM run).
CLUSTER = {}


def submission_checked(rule_name, compute, partition):
    """A runtime computed from inputs, checked against the partition's MaxTime when the job is
    submitted: SLURM accepts such a job where EnforcePartLimits is unset and leaves it PENDING
    (PartitionTimeLimit) for ever, so the run stops here instead, naming the rule and the limit."""

    def runtime(wildcards, input):
        minutes = compute(wildcards, input)
        offer = CLUSTER.get("offer")
        # A local rule (an API backend's caption jobs) runs in this process, under no partition.
        if offer is not None and not workflow.is_local(workflow.get_rule(rule_name)):
            problem = runtime_problem(JobRequest(rule_name, partition or None, runtime_min=minutes), offer)
            if problem is not None:
                raise WorkflowError(
                    f"{problem}: not submitted, since SLURM would keep it pending for ever. Set "
                    f"resources.{rule_name}.runtime or slurm_partition, or throughput: in the config."
                )
        return minutes

    return runtime


def cluster_resources(rule_name, runtime=None):
    """A rule's resources from `resources.<rule>`; `runtime` is given only by the rules whose runtime
    is their work at the stated throughput (a runtime in config still overrides it). `cluster:` adds
    the SLURM partition, account and GPU model (the executor turns these into sbatch options; a local
    run ignores them, and counts `gpu` only when given `--resources gpu=N`)."""
    spec = rule_spec(rule_name)
    cluster = config["cluster"]
    gpus = rule_gpus(rule_name)
    out = {
        "runtime": spec.get("runtime", runtime),
        "mem_mb": spec["mem_mb"],
        # One CPU per thread unless the config says otherwise.
        "cpus_per_task": spec.get("cpus_per_task") or (lambda wildcards, threads: threads),
    }
    if out["runtime"] is None:
        raise WorkflowError(f"resources.{rule_name}.runtime is missing from the config")
    partition = spec.get("slurm_partition") or cluster["gpu_partition" if gpus > 0 else "partition"]
    if callable(out["runtime"]):
        out["runtime"] = submission_checked(rule_name, out["runtime"], partition)
    if partition:
        out["slurm_partition"] = partition
    if cluster["account"]:
        out["slurm_account"] = cluster["account"]
    if gpus > 0:
        out["gpu"] = gpus
        if cluster["gpu_model"]:
            out["gpu_model"] = cluster["gpu_model"]
    return out


def launcher(rule_name):
    """How a training script starts: plain python, or torchrun with one process per GPU when the
    rule is given several (data-parallel; the contrastive negatives are gathered across GPUs)."""
    gpus = rule_gpus(rule_name)
    return f"torchrun --standalone --nproc-per-node={gpus}" if gpus > 1 else "python"


def tokenizer_dir():
    """The tokenizer folder: trained by the workflow, or the user's."""
    name = config["model"]["tokenizer"]
    return TRAINED_TOKENIZER if name == "train" else name


def backbone_dir():
    """The BLIP-2 starting point: pretrained by the workflow (embedded default), or the user's checkpoint."""
    name = config["model"]["backbone"]
    return TRAINED_BACKBONE if name == "train" else name


def score_settings():
    """What changes the scores: scores.* besides how the job runs, and the pairing's shortlist settings."""
    section = config["scores"]
    return {
        "reference_images": section["reference_images"],
        "seed": section["seed"],
        **section["form"],
        "top_k": config["pairing"]["top_k"],
        "engine": config["pairing"]["engine"],
        "block": config["pairing"]["block"],
    }


def planted_errors():
    """The rules differ's planted errors ("" when another backend wrote the texts)."""
    section = config["annotation"]["modification"]
    return section["planted_errors"] if section["backend"] == "rules" else ""


def facap_filters():
    """facap.filters as score -> the least value kept ({}: FACap is not filtered)."""
    return cfg.facap_filters(config["facap"])


def training_facap(wildcards):
    """The FACap a variant's stage 1 trains on: the filtered one when filters are set, except for
    Table 6's unfiltered comparisons."""
    spec = variants()[wildcards.variant]
    return FACAP_FILTERED if facap_filters() and cfg.variant_setting(spec, "facap_filtered") else FACAP


def score_targets():
    """The scores' outputs `all` builds: the filter report and Table 6 when filters are set; the
    validity report when there is something to measure the scores against: the ground truth (the
    synthetic world) or people's ratings (quality.annotations)."""
    targets = [SCORE_FIGURES["distributions"], SCORE_FIGURES["flagged"]]
    if facap_filters():
        targets += [FILTER_REPORT, TABLES[6]]
    if uses_synthetic_world() or config["quality"]["annotations"]:
        targets.append(SCORE_VALIDITY_FILES["md"])
    return targets


def figure5_variants():
    return cfg.figure5_variants(config["experiments"])


def figure5_caption():
    return cfg.figure5_caption(config["experiments"])


def variants():
    return cfg.variants(config["experiments"])


def seeds():
    return cfg.experiment_seeds(config["experiments"])


def first_seed():
    """The seed whose models Figure 6, the search index and the release use."""
    return seeds()[0]


def variant_spec(name):
    spec = dict(variants()[name])
    spec.pop("label", None)
    return spec


def has_facap_stage(name):
    return cfg.has_facap_stage(variants()[name])


def model_settings(wildcards):
    return as_json(cfg.model_settings(config, variants()[wildcards.variant]))


def stage_model(stage, variant="{variant}", seed="{seed}"):
    """A training stage's model folder (a pattern with the variant and seed left as wildcards by default)."""
    return MODEL.format(stage=stage, variant=variant, seed=seed)


def validation_outputs(stage):
    """A training run's outputs besides its model folder: its validation curve and the best point."""
    keys = dict(stage=stage, variant="{variant}", seed="{seed}")
    return {
        "curve": VALIDATION_CURVE.format(**keys),
        "best": BEST_EVALUATION.format(**keys),
        "best_rankings": BEST_RANKINGS.format(**keys),
    }


def stage2_start(wildcards):
    """Stage 2 fine-tunes the same seed's stage-1 model, or the backbone itself for a variant trained
    without FACap."""
    if has_facap_stage(wildcards.variant):
        return stage_model("stage1", wildcards.variant, wildcards.seed)
    return backbone_dir()


def dataset_file(pattern, dataset):
    """An evaluation file pattern for one evaluation set (stage and variant left as wildcards)."""
    return expand(pattern, dataset=dataset, allow_missing=True)[0]


def evaluations(models, seed_list=None, best=False):
    """The evaluation files of (stage, variant) models, each seed of `seed_list` (default: all of
    experiments.seeds), on every evaluation set, as named inputs: `results` (summaries) and
    `rankings` (per query), in the same order; with `best`, also each run's best-on-val files."""
    keys = [
        dict(stage=s, variant=v, seed=seed) for s, v in models for seed in (seeds() if seed_list is None else seed_list)
    ]
    results = [EVALUATION.format(**k, dataset=d) for k in keys for d in EVAL_DATASETS]
    rankings = [RANKINGS.format(**k, dataset=d) for k in keys for d in EVAL_DATASETS]
    if best:
        results += [BEST_EVALUATION.format(**k) for k in keys]
        rankings += [BEST_RANKINGS.format(**k) for k in keys]
    return {"results": results, "rankings": rankings}


def check_experiment_names():
    cfg.check_experiment_names(config["experiments"], config["search"]["variant"])


def table_inputs(wildcards):
    ex = config["experiments"]
    if wildcards.number == "3":
        models = [("stage1", ex["table3"]["without_finetuning"]), ("stage2", ex["table3"]["with_finetuning"])]
    elif wildcards.number == "6":
        models = [(s, name) for s in ("stage1", "stage2") for name in cfg.table6_variants(ex)]
    elif wildcards.number == "4":
        models = [("stage2", e[k]) for e in ex["table4"] for k in ("without_facap", "with_facap")]
    else:
        models = [(s, v) for s in ("stage1", "stage2") for v in ex["table5"]]
    # Tables 3-5 show the last and the best-on-val checkpoint; Table 6 the last.
    return evaluations(models, best=wildcards.number != "6")


def table_variants(wildcards):
    """The variants' settings a table prints (Table 5's rows): only those, so that editing another
    variant leaves the table alone."""
    names = config["experiments"]["table5"] if wildcards.number == "5" else []
    return as_json({name: variants()[name] for name in names})


def search_index():
    return SEARCH_INDEX.format(stage=config["search"]["stage"], variant=config["search"]["variant"])


def search_model(wildcards):
    """The model a search index is built from: the first seed's."""
    return stage_model(wildcards.stage, wildcards.variant, first_seed())


def experiment_targets():
    return [TABLES[3], TABLES[4], TABLES[5], FIGURE5, FIGURE6, search_index()]


def all_targets():
    """Everything `snakemake all` builds; it grows as stages land."""
    return [
        MANIFEST,
        MANIFEST_TRIPLETS,
        MANIFEST_REPORT,
        MANIFEST_ISSUES,
        EMBEDDINGS_REPORT,
        PAIRS,
        PAIRS_REPORT,
        CAPTIONS_REPORT,
        MODIFICATIONS_REPORT,
        FACAP,
        ENHFASHIONIQ,
        LEAKAGE_REPORT,
        TABLE1,
        *score_targets(),
        *quality_targets(),
        *experiment_targets(),
    ]


def api_jobs_local(stage):
    """Whether a stage's jobs call a remote API and must run where the internet is (a local rule)."""
    return uses_api(config, stage) and config["annotation"]["api_jobs"] == "local"


def captioner_folder():
    """The local VLM folder of the transformers captioner: an input, so a new model reruns the captions."""
    section = config["annotation"]["caption"]
    return section["model_path"] if section["backend"] == "transformers" else []


def annotation_answers():
    """What the data cards record of each annotation stage: the settings that made its answers."""
    return {stage: annotation_answer_settings(config, stage) for stage in ("caption", "modification")}


def job_option(value):
    """A param that changes how a job runs, never what it writes (the device, GPUs, concurrency,
    timeouts, the run's label, where checkpoints go). Snakemake reruns a job when its params change,
    except params derived from its resources, which follow where and how the job runs: so these
    are given as such a function, and editing them reruns nothing (fashionblip2/config.py says
    which settings are which; tests/test_workflow.py checks the reruns)."""
    return lambda wildcards, resources: value


def job_option_path(pattern):
    """A path with wildcards as a :func:`job_option` param (a file a job keeps between runs)."""
    return lambda wildcards, resources: pattern.format(**wildcards)


JOB_OPTIONS = {
    "provenance": f"--data {data_kind()} --run-name {shlex.quote(config['run_name'])}",
    "caption": as_json(annotation_job_options(config, "caption")),
    "modification": as_json(annotation_job_options(config, "modification")),
    "prices": as_json(config["annotation"]["prices"]),
    # The pilot reports its failures instead of stopping on them: they are what it is run to see.
    "pilot": {
        stage: as_json({**annotation_job_options(config, stage), "max_failed_fraction": 1.0})
        for stage in ("caption", "modification")
    },
    "embed": "--device {device} --batch-size {batch_size} --workers {loader_workers}".format(**config["embedding"]),
    "evaluation": "--device {device} --batch-size {batch_size}".format(**config["evaluation"]),
    # A training run's validation encodes as the evaluate rule does, with its batch size (memory only).
    "validation": "--validation-batch-size {batch_size}".format(**config["evaluation"]),
    "training": as_json(training_job_options(config)),
    "launcher": {name: launcher(name) for name in ("pretrain", "train_stage1", "train_stage2")},
    "checkpoints": {
        name: os.path.join(config["training"]["checkpoint_dir"], name) for name in ("backbone", "stage1", "stage2")
    },
}


def known_int(value):
    """A resource as a number; 0 when it is only known at submission (computed from the job's inputs)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def device_keys():
    """The device setting each GPU-capable rule's step follows (the captioner's only when it is a
    local model)."""
    keys = {"embed": "embedding.device", "evaluate": "evaluation.device", "search_index": "evaluation.device"}
    keys |= dict.fromkeys(("pretrain", "train_stage1", "train_stage2"), "training.device")
    if config["annotation"]["caption"]["backend"] == "transformers":
        keys |= dict.fromkeys(("caption", "pilot_caption"), "annotation.caption.device")
    return keys


def setting(dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def check_device_settings():
    """At parse time: a CUDA device where cluster.use_gpus says there is no GPU can never run (a
    retry would fail the same way), so nothing starts."""
    rules_of = {}
    for rule_name, key in device_keys().items():
        rules_of.setdefault(key, []).append(rule_name)
    problems = device_conflicts(config, rules_of)
    if problems:
        raise WorkflowError("these settings cannot run together:\n  " + "\n  ".join(problems))


def cluster_requests():
    """What each rule's jobs of this run will ask SLURM for (the largest request per rule)."""
    devices = device_keys()
    largest = {}
    for job in workflow.dag.needrun_jobs():
        if job.is_local:
            continue
        res = job.resources
        request = JobRequest(
            job.name,
            partition=res.get("slurm_partition") or None,
            runtime_min=known_int(res.get("runtime")),
            mem_mb=known_int(res.get("mem_mb")),
            cpus=int(res.get("cpus_per_task", 0) or job.threads),
            gpus=int(res.get("gpu", 0) or 0),
            gpu_model=res.get("gpu_model") or None,
            device_key=devices.get(job.name),
            device=str(setting(devices[job.name])) if job.name in devices else "",
        )
        size = (request.gpus, request.mem_mb, request.runtime_min, request.cpus)
        if job.name not in largest or size > largest[job.name][0]:
            largest[job.name] = (size, request)
    return [request for _, request in largest.values()]


def slurm_executor():
    """The SLURM executor of this run, or None (a local run, a dry run, a job inside SLURM)."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or workflow.dryrun:
        return None
    return workflow.scheduler._executor


def tag_jobs(executor):
    """Name this run's jobs after the working directory's run key (the plugin names every job of a
    run `<jobname_prefix>_<run uuid>`; the prefix is put in front here, since it depends on the
    folder and a profile is static): a rerun in the same folder recognises them by the key."""
    key = run_key(workflow.workdir_init)
    if not isinstance(getattr(executor, "run_uuid", None), str):
        raise RuntimeError(
            "the SLURM executor plugin has no run_uuid (a version this workflow does not know): "
            "its jobs cannot be tagged, so a rerun could not find them"
        )
    if not executor.run_uuid.startswith(f"{key}_"):
        executor.run_uuid = f"{key}_{executor.run_uuid}"
    return key


def settle_leftover_jobs(key, own_name):
    """Jobs of a killed earlier run in this folder that SLURM still runs would race this run's copies
    of them (same outputs, same checkpoint folders): cancel them and wait until they are gone
    (cluster.leftover_jobs: cancel), or stop and list them (stop)."""
    leftovers = live_jobs(key, own_name)
    if not leftovers:
        return
    listed = ", ".join(j.describe() for j in sorted(leftovers, key=lambda j: int(j.job_id.split("_")[0])))
    if config["cluster"]["leftover_jobs"] == "stop":
        raise RuntimeError(
            f"an earlier run in this folder left live SLURM jobs: {listed}. Wait for them or scancel them, "
            "then run again (cluster.leftover_jobs: cancel does this for you)"
        )
    logger.warning(f"Cancelling the live SLURM jobs an earlier run in this folder left: {listed}")
    cancel_and_wait(key, own_name)


def cluster_preflight():
    """On a SLURM run, before the first submission: tag this run's jobs, settle the jobs a killed
    earlier run left, and check that the cluster can run every job. Returns why the run must stop,
    or None (raised by stop_hook, so that the message prints without Snakefile lines)."""
    executor = slurm_executor()
    if executor is None:
        return None
    try:
        key = tag_jobs(executor)
        settle_leftover_jobs(key, executor.run_uuid)
        CLUSTER["offer"] = read_cluster()
        preflight(cluster_requests(), CLUSTER["offer"])
    except RuntimeError as e:
        return str(e)
    return None


# Snakemake prints an ApiError as its message alone.
CLUSTER_PREFLIGHT = stop_hook(cluster_preflight, ApiError)


def remove_empty_checkpoint_folders():
    """After a complete run: each training run removes its own checkpoint folder when its model is
    written; the per-stage folders above them (and the checkpoint folder, when it is the
    workflow's own) go too once empty."""
    root = config["training"]["checkpoint_dir"]
    folders = [JOB_OPTIONS["checkpoints"][name] for name in ("stage1", "stage2")]
    if not os.path.isabs(root):
        folders.append(root)
    # A run's folder is <stage>/<variant>/seed<N>: the variant folders above go first.
    variant_folders = [os.path.join(f, v) for f in folders[:2] if os.path.isdir(f) for v in sorted(os.listdir(f))]
    for folder in variant_folders + folders:
        try:
            os.rmdir(folder)
        except OSError:  # missing, or not empty (another run's checkpoints): left alone
            pass


# --- runtime requests from throughput (config `throughput:`, the one place) -------------------------


def runtime_for(work, per_second):
    """Minutes for `work` units at `per_second` units a second, with throughput's margin and start-up."""
    spec = config["throughput"]
    return runtime_minutes(work, per_second, margin=spec["margin"], startup_min=spec["startup_min"])


def made(path):
    """An input that a resource is computed from. Snakemake asks for resources before the inputs
    exist (a dry run, the preflight): a FileNotFoundError naming the input makes the value <TBD>,
    computed again when the job is submitted."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return path


def embed_runtime(wildcards, input):
    """The images of this shard at the stated embedding speed (counted when the job is submitted)."""
    n = count_for_pairing(made(input.manifest), config["pairing"]["sources"], config["pairing"]["fashioniq_splits"])
    start, end = shard_bounds(n, config["embedding"]["shards"], int(wildcards.shard))
    return runtime_for(end - start, config["throughput"]["embed_images_per_s"])


def caption_runtime(wildcards, input):
    """The images of this caption shard at the stated captioning speed."""
    import pandas as pd

    pairs = pd.read_parquet(made(input.pairs), columns=["reference_id", "target_id"])
    n = len(pd.unique(pd.concat([pairs["reference_id"], pairs["target_id"]])))
    start, end = shard_bounds(n, config["annotation"]["shards"], int(wildcards.shard))
    return runtime_for(end - start, config["throughput"]["caption_images_per_s"])


def training_runtime(run):
    """A training run's steps at the stated seconds per step; stage 1 and 2 add their FashionIQ-val
    validations (its images and queries at the stated inference speed, counted when the job is
    submitted), which at paper scale are most of an hour per run."""
    steps = config["training"][run]["steps"]
    if run == "pretrain":
        return runtime_for(cfg.training_seconds(config, run, steps, 0), 1.0)

    def runtime(wildcards, input):
        import pyarrow.parquet as pq

        categories = config["sources"]["fashioniq"]["categories"]
        images = pq.read_table(made(input.manifest), columns=["source", "split", "category"]).to_pandas()
        queries = pq.read_table(made(input.triplets), columns=["split", "category"]).to_pandas()
        items = fashioniq_val_images(images, categories)
        items += int(((queries.split == "val") & queries.category.isin(categories)).sum())
        return runtime_for(cfg.training_seconds(config, run, steps, items), 1.0)

    return runtime


def inference_runtime(wildcards, input):
    """Every manifest image once (an upper bound of a gallery and its queries) at the stated speed."""
    import pyarrow.parquet as pq

    images = pq.ParquetFile(made(input.manifest)).metadata.num_rows
    return runtime_for(images, config["throughput"]["inference_images_per_s"])


# --- the plan (`snakemake --cores 1 plan`) ---------------------------------------------------------

PLAN = "results/plan.md"
PLAN_JSON = "results/plan.json"


def plan_reads():
    """The files the plan reads when they exist (it makes none of them)."""
    return [MANIFEST, PAIRS, CAPTIONS, PILOT_PAIRS, PILOT_CAPTIONS, PILOT_MODIFICATIONS]


def plan_seen():
    """The size and time of each file the plan reads, and the result cache's answers: a param, so that
    the plan is made again when one appears or changes, without making it an input."""
    seen = {}
    for path in plan_reads():
        if os.path.exists(path):
            stat = os.stat(path)
            seen[path] = [stat.st_size, stat.st_mtime_ns]
    cache = config["annotation"]["cache_dir"]
    if os.path.isdir(cache):
        seen[cache] = sum(len(files) for _, _, files in os.walk(cache))
    return as_json(seen)


def planning_only():
    """Whether the command line asks for the plan alone: the workflow is parsed before Snakemake hands
    over its targets, so they are read from the command line as Snakemake's own parser reads it."""
    from snakemake.cli import get_argument_parser

    try:
        args, _ = get_argument_parser().parse_known_args(sys.argv[1:])
    except SystemExit:  # not Snakemake's command line (the API, a test runner)
        return False
    targets = set(getattr(args, "targets", None) or [])
    return bool(targets) and targets <= {"plan", PLAN, PLAN_JSON}


# The release (rules/release.smk): FACap as Parquet shards with its dataset card, and each model of
# release.variants with its model card, in folders the Hugging Face Hub loads (nothing is uploaded).
RELEASE_FACAP = "release/facap"
RELEASE_MODEL = "release/model/{variant}"


def source_folders():
    """Each enabled source's folder (a catalogue's: its table's folder): the released image paths are
    relative to it, as a user's own copy of the dataset has them."""
    return {
        name: spec["root"] if "root" in spec else os.path.dirname(spec["path"])
        for name, spec in resolved_sources().items()
    }


def release_models():
    """The model folders release.variants names at release.stage, and the stage-1 folders the stage-2
    ones started from (their cards say what stage 1 trained on). An undeclared variant is named."""
    section = config["release"]
    for name in section["variants"]:
        if name not in variants():
            raise WorkflowError(f"release.variants: variant {name!r} is not declared in experiments.variants")
        if section["stage"] == "stage1" and not has_facap_stage(name):
            raise WorkflowError(f"release.variants: variant {name!r} has facap_fraction 0: it has no stage-1 model")
    stage2_starts = section["stage"] == "stage2"
    return {
        "models": [stage_model(section["stage"], v, first_seed()) for v in section["variants"]],
        "starts": [
            stage_model("stage1", v, first_seed()) for v in section["variants"] if stage2_starts and has_facap_stage(v)
        ],
    }
