# Stage: FashionBLIP-2 training (paper §4.4). The tokenizer and the "general-domain" backbone of
# the embedded default, then stage 1 on FACap and stage 2 on FashionIQ for every variant of
# experiments.variants and seed of experiments.seeds; each run also keeps its FashionIQ-val curve
# and best point (the tables' best-on-val numbers). Checkpoints live outside the outputs, so a
# killed job resumes.
# Params carry what changes a model; the device, GPUs (launcher), checkpoint folder and run label
# are job_option params (rules/common.smk), so moving a run never retrains it.
# Scripts: train_tokenizer.py (tokenizer), pretrain_backbone.py (pretrain), train_model.py for both
# stages (--stage stage1|stage2: one trainer, two recipes).


rule tokenizer:
    input:
        manifest=MANIFEST,
        triplets=MANIFEST_TRIPLETS,
        pairs=PAIRS,
        captions=CAPTIONS,
        modifications=MODIFICATIONS,
    output:
        directory(TRAINED_TOKENIZER),
    log:
        log_file("tokenizer"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("tokenizer")
    resources:
        **cluster_resources("tokenizer"),
    params:
        vocab_size=config["model"]["vocab_size"],
        max_length=config["model"]["max_text_length"],
        facap_sources=json.dumps(config["facap"]["sources"]),
    shell:
        "python workflow_scripts/train_tokenizer.py --manifest {input.manifest} --pairs {input.pairs}"
        " --captions {input.captions} --modifications {input.modifications} --facap-sources {params.facap_sources:q}"
        " --fashioniq-triplets {input.triplets} --vocab-size {params.vocab_size} --max-length {params.max_length}"
        " --out {output} 2> {log}"


rule pretrain:
    input:
        manifest=MANIFEST,
        tokenizer=tokenizer_dir(),
    output:
        directory(TRAINED_BACKBONE),
    log:
        log_file("pretrain"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("pretrain")
    resources:
        **cluster_resources("pretrain", runtime=training_runtime("pretrain")),
    params:
        recipe=as_json(training_result_settings(config, "pretrain")),
        image_size=config["model"]["image_size"],
        max_text_length=config["model"]["max_text_length"],
        launcher=job_option(JOB_OPTIONS["launcher"]["pretrain"]),
        job_options=job_option(JOB_OPTIONS["training"]),
        checkpoints=job_option(JOB_OPTIONS["checkpoints"]["backbone"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "{params.launcher} workflow_scripts/pretrain_backbone.py --manifest {input.manifest}"
        " --tokenizer {input.tokenizer} --image-size {params.image_size} --max-text-length {params.max_text_length}"
        " --recipe {params.recipe:q} --job-options {params.job_options:q} --checkpoints {params.checkpoints}"
        " --threads {threads} {params.provenance} --out {output} 2> {log}"


rule train_stage1:
    input:
        manifest=MANIFEST,
        triplets=MANIFEST_TRIPLETS,
        facap=training_facap,
        fashioniq=fashioniq_input(),
        start=backbone_dir(),
        tokenizer=tokenizer_dir(),
    output:
        **validation_outputs("stage1"),
        model=directory(stage_model("stage1")),
    log:
        log_file("train_stage1", "{variant}_seed{seed}"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("train_stage1")
    resources:
        **cluster_resources("train_stage1", runtime=training_runtime("stage1")),
    params:
        spec=lambda wc: json.dumps(variant_spec(wc.variant), sort_keys=True),
        model=model_settings,
        recipe=as_json(training_result_settings(config, "stage1")),
        text_cleanup=config["text"]["cleanup"],
        fashioniq_root=fashioniq_root(),
        categories=json.dumps(config["sources"]["fashioniq"]["categories"]),
        launcher=job_option(JOB_OPTIONS["launcher"]["train_stage1"]),
        job_options=job_option(JOB_OPTIONS["training"]),
        validation=job_option(JOB_OPTIONS["validation"]),
        checkpoints=job_option(JOB_OPTIONS["checkpoints"]["stage1"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "{params.launcher} workflow_scripts/train_model.py --stage stage1 --variant {wildcards.variant}"
        " --seed {wildcards.seed} --spec {params.spec:q} --model-settings {params.model:q} --start {input.start}"
        " --tokenizer {input.tokenizer} --manifest {input.manifest} --facap {input.facap}"
        " --fashioniq-root {params.fashioniq_root} --categories {params.categories:q}"
        " --text-cleanup {params.text_cleanup} --recipe {params.recipe:q} --job-options {params.job_options:q}"
        " --checkpoints {params.checkpoints}/{wildcards.variant}/seed{wildcards.seed} --threads {threads}"
        " {params.validation} --validation-curve {output.curve} --best-out {output.best} {output.best_rankings}"
        " {params.provenance} --out {output.model} 2> {log}"


rule train_stage2:
    input:
        manifest=MANIFEST,
        triplets=MANIFEST_TRIPLETS,
        fashioniq=fashioniq_input(),
        start=stage2_start,
        tokenizer=tokenizer_dir(),
    output:
        **validation_outputs("stage2"),
        model=directory(stage_model("stage2")),
    log:
        log_file("train_stage2", "{variant}_seed{seed}"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("train_stage2")
    resources:
        **cluster_resources("train_stage2", runtime=training_runtime("stage2")),
    params:
        spec=lambda wc: json.dumps(variant_spec(wc.variant), sort_keys=True),
        model=model_settings,
        recipe=as_json(training_result_settings(config, "stage2")),
        text_cleanup=config["text"]["cleanup"],
        fashioniq_root=fashioniq_root(),
        categories=json.dumps(config["sources"]["fashioniq"]["categories"]),
        launcher=job_option(JOB_OPTIONS["launcher"]["train_stage2"]),
        job_options=job_option(JOB_OPTIONS["training"]),
        validation=job_option(JOB_OPTIONS["validation"]),
        checkpoints=job_option(JOB_OPTIONS["checkpoints"]["stage2"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "{params.launcher} workflow_scripts/train_model.py --stage stage2 --variant {wildcards.variant}"
        " --seed {wildcards.seed} --spec {params.spec:q} --model-settings {params.model:q} --start {input.start}"
        " --tokenizer {input.tokenizer} --manifest {input.manifest}"
        " --fashioniq-root {params.fashioniq_root} --categories {params.categories:q}"
        " --text-cleanup {params.text_cleanup} --recipe {params.recipe:q} --job-options {params.job_options:q}"
        " --checkpoints {params.checkpoints}/{wildcards.variant}/seed{wildcards.seed} --threads {threads}"
        " {params.validation} --validation-curve {output.curve} --best-out {output.best} {output.best_rankings}"
        " {params.provenance} --out {output.model} 2> {log}"
