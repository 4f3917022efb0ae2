# Stage: two-stage annotation (paper §3.1), then FACap, enhFashionIQ and Table 1.
# Every model answer goes through the result cache (annotation.cache_dir): nothing is paid twice.
# Params carry only the settings that change the answers; how a job runs (concurrency, timeouts,
# the failure limit, the cache folder) are job_option params (rules/common.smk).
# Scripts: annotate.py runs caption, modification, pilot_caption and pilot_modification (one stage and shard of
# questions, whatever asks them); gather_annotations.py both gathers; run_pilot.py the pilot's sample
# and table; assemble_datasets.py facap and enhfashioniq (one layout writer); make_table1.py.


# Seconds of work on small files: on a cluster they run in the main Snakemake process, not as jobs.
localrules:
    gather_captions,
    gather_modifications,
    table1,
    pilot_pairs,
    pilot,


# A job of an API backend waits on the network, not on a node: under a cluster profile it runs in
# the Snakemake process, where the internet is (annotation.api_jobs: cluster sends it to the nodes).
if api_jobs_local("caption"):

    localrules:
        caption,


if api_jobs_local("modification"):

    localrules:
        modification,


rule caption:
    input:
        manifest=MANIFEST,
        pairs=PAIRS,
        prompt=config["annotation"]["caption"]["prompt"],
        model=captioner_folder(),
    output:
        CAPTION_SHARD,
    log:
        run=log_file("caption", "{shard}"),
        failures=log_file("caption", "{shard}", "_failures.tsv"),
    conda:
        "../envs/vlm.yaml"
    threads: rule_threads("caption")
    resources:
        **cluster_resources("caption", runtime=caption_runtime),
    params:
        shards=config["annotation"]["shards"],
        settings=as_json(annotation_answer_settings(config, "caption")),
        job_options=job_option(JOB_OPTIONS["caption"]),
        prices=job_option(JOB_OPTIONS["prices"]),
        cache=job_option(config["annotation"]["cache_dir"]),
        batches=job_option_path(CAPTION_BATCHES),
    shell:
        "python workflow_scripts/annotate.py --stage caption --shard {wildcards.shard} --shards {params.shards}"
        " --settings {params.settings:q} --job-options {params.job_options:q} --prices {params.prices:q}"
        " --prompt {input.prompt} --manifest {input.manifest} --pairs {input.pairs}"
        " --cache {params.cache:q} --batch-state {params.batches} --failures {log.failures} --out {output}"
        " 2> {log.run}"


rule gather_captions:
    input:
        annotation_shards(CAPTION_SHARD),
    output:
        captions=CAPTIONS,
        report=CAPTIONS_REPORT,
    log:
        log_file("gather_captions"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("gather_captions"),
    params:
        settings=as_json(annotation_answer_settings(config, "caption")),
    shell:
        "python workflow_scripts/gather_annotations.py --shards {input} --settings {params.settings:q}"
        " --out {output.captions} --report {output.report} 2> {log}"


rule modification:
    input:
        pairs=PAIRS,
        captions=CAPTIONS,
        prompt=config["annotation"]["modification"]["prompt"],
    output:
        MODIFICATION_SHARD,
    log:
        run=log_file("modification", "{shard}"),
        failures=log_file("modification", "{shard}", "_failures.tsv"),
    conda:
        "../envs/llm.yaml"
    threads: rule_threads("modification")
    resources:
        **cluster_resources("modification"),
    params:
        shards=config["annotation"]["shards"],
        settings=as_json(annotation_answer_settings(config, "modification")),
        job_options=job_option(JOB_OPTIONS["modification"]),
        prices=job_option(JOB_OPTIONS["prices"]),
        cache=job_option(config["annotation"]["cache_dir"]),
        batches=job_option_path(MODIFICATION_BATCHES),
    shell:
        "python workflow_scripts/annotate.py --stage modification --shard {wildcards.shard} --shards {params.shards}"
        " --settings {params.settings:q} --job-options {params.job_options:q} --prices {params.prices:q}"
        " --prompt {input.prompt} --pairs {input.pairs} --captions {input.captions}"
        " --cache {params.cache:q} --batch-state {params.batches} --failures {log.failures} --out {output}"
        " 2> {log.run}"


# The paid-run pilot (`snakemake --cores 2 pilot`): a seeded sample of pairs through the full run's
# backends, settings and cache (so the full run does not pay for them again), checked against Table 1.
rule pilot_pairs:
    input:
        PAIRS,
    output:
        PILOT_PAIRS,
    log:
        log_file("pilot_pairs"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("pilot_pairs"),
    params:
        # Only what draws the sample: a budget or tolerance edit remakes the table, not the pilot.
        pilot=as_json({k: config["pilot"][k] for k in ("pairs", "seed")}),
    shell:
        "python workflow_scripts/run_pilot.py sample --pairs {input} --pilot {params.pilot:q} --out {output} 2> {log}"


if api_jobs_local("caption"):

    localrules:
        pilot_caption,


if api_jobs_local("modification"):

    localrules:
        pilot_modification,


rule pilot_caption:
    input:
        manifest=MANIFEST,
        pairs=PILOT_PAIRS,
        prompt=config["annotation"]["caption"]["prompt"],
        model=captioner_folder(),
    output:
        PILOT_CAPTIONS,
    log:
        run=log_file("pilot_caption"),
        failures=log_file("pilot_caption", None, "_failures.tsv"),
    conda:
        "../envs/vlm.yaml"
    threads: rule_threads("pilot_caption")
    resources:
        **cluster_resources("pilot_caption"),
    params:
        settings=as_json(annotation_answer_settings(config, "caption")),
        job_options=job_option(JOB_OPTIONS["pilot"]["caption"]),
        prices=job_option(JOB_OPTIONS["prices"]),
        cache=job_option(config["annotation"]["cache_dir"]),
        batches=job_option(PILOT_CAPTION_BATCHES),
    shell:
        "python workflow_scripts/annotate.py --stage caption --shard 0 --shards 1 --settings {params.settings:q}"
        " --job-options {params.job_options:q} --prices {params.prices:q} --prompt {input.prompt}"
        " --manifest {input.manifest} --pairs {input.pairs} --cache {params.cache:q} --failures {log.failures}"
        " --batch-state {params.batches} --out {output} 2> {log.run}"


rule pilot_modification:
    input:
        pairs=PILOT_PAIRS,
        captions=PILOT_CAPTIONS,
        prompt=config["annotation"]["modification"]["prompt"],
    output:
        PILOT_MODIFICATIONS,
    log:
        run=log_file("pilot_modification"),
        failures=log_file("pilot_modification", None, "_failures.tsv"),
    conda:
        "../envs/llm.yaml"
    threads: rule_threads("pilot_modification")
    resources:
        **cluster_resources("pilot_modification"),
    params:
        settings=as_json(annotation_answer_settings(config, "modification")),
        job_options=job_option(JOB_OPTIONS["pilot"]["modification"]),
        prices=job_option(JOB_OPTIONS["prices"]),
        cache=job_option(config["annotation"]["cache_dir"]),
        batches=job_option(PILOT_MODIFICATION_BATCHES),
    shell:
        "python workflow_scripts/annotate.py --stage modification --shard 0 --shards 1 --settings {params.settings:q}"
        " --job-options {params.job_options:q} --prices {params.prices:q} --prompt {input.prompt}"
        " --pairs {input.pairs} --captions {input.captions} --cache {params.cache:q} --failures {log.failures}"
        " --batch-state {params.batches} --out {output} 2> {log.run}"


rule pilot:
    input:
        pairs=PAIRS,
        manifest=MANIFEST,
        pilot_pairs=PILOT_PAIRS,
        captions=PILOT_CAPTIONS,
        modifications=PILOT_MODIFICATIONS,
        caption_prompt=config["annotation"]["caption"]["prompt"],
        modification_prompt=config["annotation"]["modification"]["prompt"],
    output:
        md=report(PILOT_FILES["md"], caption="../report/table.rst", category="Tables"),
        csv=PILOT_FILES["csv"],
    log:
        log_file("pilot"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("pilot"),
    params:
        caption=as_json(annotation_answer_settings(config, "caption")),
        modification=as_json(annotation_answer_settings(config, "modification")),
        limits=as_json({s: config["annotation"][s]["max_failed_fraction"] for s in ("caption", "modification")}),
        pilot=as_json(config["pilot"]),
        prices=as_json(config["annotation"]["prices"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/run_pilot.py table --pairs {input.pairs} --manifest {input.manifest}"
        " --pilot-pairs {input.pilot_pairs} --captions {input.captions} --modifications {input.modifications}"
        " --caption-settings {params.caption:q} --modification-settings {params.modification:q}"
        " --caption-prompt {input.caption_prompt} --modification-prompt {input.modification_prompt}"
        " --limits {params.limits:q} --prices {params.prices:q} --pilot {params.pilot:q} {params.provenance}"
        " --md {output.md} --csv {output.csv} 2> {log}"


rule gather_modifications:
    input:
        annotation_shards(MODIFICATION_SHARD),
    output:
        modifications=MODIFICATIONS,
        report=MODIFICATIONS_REPORT,
    log:
        log_file("gather_modifications"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("gather_modifications"),
    params:
        settings=as_json(annotation_answer_settings(config, "modification")),
    shell:
        "python workflow_scripts/gather_annotations.py --shards {input} --settings {params.settings:q}"
        " --out {output.modifications} --report {output.report} 2> {log}"


rule facap:
    input:
        pairs=PAIRS,
        captions=CAPTIONS,
        modifications=MODIFICATIONS,
        scores=TRIPLET_SCORES,
        leakage=LEAKAGE,
    output:
        directory(FACAP),
    log:
        log_file("facap"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("facap"),
    params:
        sources=json.dumps(config["facap"]["sources"]),
        annotation=as_json(annotation_answers()),
        leakage_action=config["leakage"]["action"],
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/assemble_datasets.py facap --pairs {input.pairs} --captions {input.captions}"
        " --modifications {input.modifications} --scores {input.scores} --sources {params.sources:q}"
        " --annotation {params.annotation:q} --leakage {input.leakage} --leakage-action {params.leakage_action}"
        " {params.provenance} --out {output} 2> {log}"


rule enhfashioniq:
    input:
        pairs=PAIRS,
        modifications=MODIFICATIONS,
        scores=TRIPLET_SCORES,
        fashioniq=fashioniq_input(),
    output:
        directory(ENHFASHIONIQ),
    log:
        log_file("enhfashioniq"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("enhfashioniq"),
    params:
        fashioniq_root=fashioniq_root(),
        annotation=as_json(annotation_answers()),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/assemble_datasets.py enhfashioniq --pairs {input.pairs}"
        " --modifications {input.modifications} --scores {input.scores} --fashioniq-root {params.fashioniq_root}"
        " --annotation {params.annotation:q} {params.provenance} --out {output} 2> {log}"


rule table1:
    input:
        facap=FACAP,
        facap_filtered=FACAP_FILTERED if facap_filters() else [],
        fashioniq=fashioniq_input(),
    output:
        md=report(TABLE1_FILES["md"], caption="../report/table1.rst", category="Tables"),
        csv=TABLE1_FILES["csv"],
    log:
        log_file("table1"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("table1"),
    params:
        fashioniq_root=fashioniq_root(),
        filtered=f"--facap-filtered {FACAP_FILTERED}" if facap_filters() else "",
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_table1.py --facap {input.facap} {params.filtered}"
        " --fashioniq-root {params.fashioniq_root}"
        " {params.provenance} --md {output.md} --csv {output.csv} 2> {log}"
