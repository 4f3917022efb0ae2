# FACap / FashionBLIP-2: build a fashion composed-image-retrieval dataset and train and evaluate
# FashionBLIP-2 on it. `snakemake --cores 2 all` runs the embedded default (a synthetic world).
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from fashionblip2.config import check_paths

min_version("9.0")


configfile: "config.yaml"


validate(config, "config/schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


# Every path the config names, checked before the first job starts (a GPU job must never be the one
# to find a typo): the message names the config key. `snakemake plan` reads none of them: it prices
# a config whose data are not there yet (a fresh clone, the paper preset before data/raw).
if not planning_only():
    try:
        check_paths(config)
    except ValueError as e:  # a message for the user, not a traceback
        raise WorkflowError(str(e)) from None


check_experiment_names()
check_device_settings()


wildcard_constraints:
    shard=r"\d+",
    seed=r"\d+",
    source="fashion200k|deepfashion_mm|fashioniq",
    stage="stage1|stage2",
    variant="|".join(sorted(variants(), key=len, reverse=True)),
    dataset="|".join(EVAL_DATASETS),


include: "rules/sources.smk"
include: "rules/pairing.smk"
include: "rules/annotation.smk"
include: "rules/leakage.smk"
include: "rules/scores.smk"
include: "rules/quality.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"
include: "rules/results.smk"
include: "rules/plan.smk"
include: "rules/release.smk"


workflow.onstart(CLUSTER_PREFLIGHT)


onsuccess:
    remove_empty_checkpoint_folders()


rule all:
    default_target: True
    input:
        all_targets(),
