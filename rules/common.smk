# Paths, input functions and config helpers shared by every rule file (no rules here).
import json
import os

SYNTHETIC_WORLD = "data/synthetic/world"
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
FACAP = "data/facap"
ENHFASHIONIQ = "data/enhfashioniq"
TABLE1 = "results/tables/table1.md"



def enabled_sources():
    return {name: spec for name, spec in config["sources"].items() if spec.get("enabled", True)}


def uses_synthetic_world():
    return any(spec.get("root") == "synthetic" for spec in enabled_sources().values())


def resolved_sources():
    """The enabled sources with "synthetic" roots replaced by the generated world's folders."""
    out = {}
    for name, spec in enabled_sources().items():
        spec = dict(spec)
        if spec.get("root") == "synthetic":
            spec["root"] = os.path.join(SYNTHETIC_WORLD, name)
        out[name] = spec
    return out


def manifest_inputs(wildcards):
    """The generated world, or the user's own source folders and catalogue (so a missing one fails early)."""
    inputs = [SYNTHETIC_WORLD] if uses_synthetic_world() else []
    for name, spec in enabled_sources().items():
        if name == "catalogue":
            inputs.append(spec["path"])
        elif spec.get("root") != "synthetic":
            inputs.append(spec["root"])
    return inputs


def data_kind():
    """Recorded in reports: the synthetic world, or real data."""
    return "synthetic" if uses_synthetic_world() else "real"


def embedding_shards():
    return expand(EMBEDDING_SHARD, shard=range(config["embedding"]["shards"]))


def annotation_shards(pattern):
    return expand(pattern, shard=range(config["annotation"]["shards"]))


def fashioniq_root():
    """The FashionIQ folder (for reading its annotation files)."""
    spec = config["sources"]["fashioniq"]
    return os.path.join(SYNTHETIC_WORLD, "fashioniq") if spec["root"] == "synthetic" else spec["root"]


def fashioniq_input():
    """The input of rules that read FashionIQ files (the generated world, or the user's folder)."""
    return SYNTHETIC_WORLD if config["sources"]["fashioniq"]["root"] == "synthetic" else fashioniq_root()


def rule_resources(rule_name, key, default):
    return config.get("resources", {}).get(rule_name, {}).get(key, default)


def all_targets():
    """Everything `snakemake all` builds; it grows as stages land."""
    return [MANIFEST, MANIFEST_TRIPLETS, MANIFEST_REPORT, MANIFEST_ISSUES, EMBEDDINGS_REPORT, PAIRS, PAIRS_REPORT,
            CAPTIONS_REPORT, MODIFICATIONS_REPORT, FACAP, ENHFASHIONIQ, TABLE1]
