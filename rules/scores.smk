# Stage: a score on every triplet (issue 22). FACap's and enhFashionIQ's triplets are scored with
# the workflow's backbone before they are released (the scores are columns of their rows); FACap is
# filtered by facap.filters for stage 1; on the synthetic world the scores are measured against its
# ground truth. A threshold edit replans from facap_filtered onward, nothing upstream of it.
# Scripts: score_triplets.py (triplet_scores), filter_facap.py (facap_filtered),
# score_validity.py (score_validity), make_score_figures.py (score_figures).


rule triplet_scores:
    input:
        pairs=PAIRS,
        captions=CAPTIONS,
        modifications=MODIFICATIONS,
        manifest=MANIFEST,
        embeddings=EMBEDDINGS,
        backbone=backbone_dir(),
        tokenizer=tokenizer_dir(),
    output:
        TRIPLET_SCORES,
    log:
        log_file("triplet_scores"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("triplet_scores")
    resources:
        **cluster_resources("triplet_scores", runtime=inference_runtime),
    params:
        settings=as_json(score_settings()),
        max_text_length=config["model"]["max_text_length"],
        device=job_option(config["scores"]["device"]),
        batch_size=job_option(config["scores"]["batch_size"]),
    shell:
        "python workflow_scripts/score_triplets.py --pairs {input.pairs} --captions {input.captions}"
        " --modifications {input.modifications} --manifest {input.manifest} --embeddings {input.embeddings}"
        " --backbone {input.backbone} --tokenizer {input.tokenizer} --max-text-length {params.max_text_length}"
        " --settings {params.settings:q} --device {params.device} --batch-size {params.batch_size}"
        " --threads {threads} --out {output} 2> {log}"


rule facap_filtered:
    input:
        FACAP,
    output:
        facap=directory(FACAP_FILTERED),
        report=report(FILTER_REPORT, caption="../report/filters.rst", category="Triplet scores"),
    log:
        log_file("facap_filtered"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("facap_filtered"),
    params:
        filters=as_json(facap_filters()),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/filter_facap.py --facap {input} --filters {params.filters:q} {params.provenance}"
        " --out {output.facap} --report {output.report} 2> {log}"


# An evaluation rule: it may read the synthetic world's ground truth (on real data: people's ratings only).
rule score_validity:
    input:
        scores=TRIPLET_SCORES,
        manifest=MANIFEST,
        truth=GROUND_TRUTH if uses_synthetic_world() else [],
        sample=QUALITY_SAMPLE,
        ratings=lambda wildcards: quality_annotations(),
    output:
        md=report(SCORE_VALIDITY_FILES["md"], caption="../report/score_validity.rst", category="Triplet scores"),
        csv=SCORE_VALIDITY_FILES["csv"],
        labels=TRUTH_LABELS,
    log:
        log_file("score_validity"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("score_validity"),
    params:
        truth=f"--ground-truth {GROUND_TRUTH}" if uses_synthetic_world() else "",
        planted=as_json(planted_errors()),
        backend=config["annotation"]["modification"]["backend"],
        columns=as_json(list(SCORES)),
        thresholds=as_json(config["scores"]["thresholds"]),
        samples=config["scores"]["validity"]["samples"],
        seed=config["scores"]["validity"]["seed"],
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/score_validity.py --scores {input.scores} --manifest {input.manifest}"
        " {params.truth} --planted-errors {params.planted:q} --modification-backend {params.backend}"
        " --score-columns {params.columns:q} --thresholds {params.thresholds:q}"
        " --items {input.sample} --ratings {input.ratings} --samples {params.samples} --seed {params.seed}"
        " {params.provenance} --out-md {output.md} --out-csv {output.csv} --out-labels {output.labels} 2> {log}"


rule score_figures:
    input:
        scores=TRIPLET_SCORES,
        manifest=MANIFEST,
    output:
        distributions=report(
            SCORE_FIGURES["distributions"], caption="../report/score_distributions.rst", category="Triplet scores"
        ),
        flagged=report(SCORE_FIGURES["flagged"], caption="../report/flagged_triplets.rst", category="Triplet scores"),
    log:
        log_file("score_figures"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("score_figures"),
    params:
        thresholds=as_json(config["scores"]["thresholds"]),
        sample=config["scores"]["flagged_sample"],
        seed=config["scores"]["seed"],
    shell:
        "python workflow_scripts/make_score_figures.py --scores {input.scores} --manifest {input.manifest}"
        " --thresholds {params.thresholds:q} --sample {params.sample} --seed {params.seed}"
        " --distributions {output.distributions} --flagged {output.flagged} 2> {log}"
