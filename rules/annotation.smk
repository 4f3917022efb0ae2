# Stage: two-stage annotation (paper §3.1), then FACap, enhFashionIQ and Table 1.
# Every model answer goes through the result cache (annotation.cache_dir): nothing is paid twice.
# Params carry only the settings that change the answers; how a job runs (concurrency, timeouts,
# the failure limit, the cache folder) are run_only params (rules/common.smk).


# Seconds of work on small files: on a cluster they run in the main Snakemake process, not as jobs.
localrules:
    gather_captions,
    gather_modifications,
    table1,


# A job of an API backend waits on the network, not on a node: under a cluster profile it runs in
# the Snakemake process, where the internet is (annotation.api_jobs: cluster sends it to the nodes).
if api_jobs_local("caption"):

    localrules:
        caption,


if api_jobs_local("modification"):

    localrules:
        modify,


rule caption:
    input:
        manifest=MANIFEST,
        pairs=PAIRS,
        prompt=config["annotation"]["caption"]["prompt"],
        model=captioner_folder(),
    output:
        CAPTION_SHARD,
    log:
        run="logs/annotation/caption_{shard}.log",
        failures="logs/annotation/caption_{shard}_failures.tsv",
    conda:
        "../envs/vlm.yaml"
    threads: rule_resources("caption", "threads", 1)
    resources:
        **cluster_resources("caption", runtime=caption_runtime, mem_mb=8000, gpu=0),
    params:
        shards=config["annotation"]["shards"],
        settings=as_json(annotation_answer_settings(config, "caption")),
        run_settings=run_only(RUN["caption"]),
        prices=run_only(RUN["prices"]),
        cache=run_only(config["annotation"]["cache_dir"]),
    shell:
        "python workflow_scripts/annotate.py --stage caption --shard {wildcards.shard} --shards {params.shards}"
        " --settings {params.settings:q} --run-settings {params.run_settings:q} --prices {params.prices:q}"
        " --prompt {input.prompt} --manifest {input.manifest} --pairs {input.pairs}"
        " --cache {params.cache:q} --failures {log.failures} --out {output} 2> {log.run}"


rule gather_captions:
    input:
        annotation_shards(CAPTION_SHARD),
    output:
        captions=CAPTIONS,
        report=CAPTIONS_REPORT,
    log:
        "logs/annotation/captions.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("gather_captions", runtime=10, mem_mb=4000),
    params:
        settings=as_json(annotation_answer_settings(config, "caption")),
    shell:
        "python workflow_scripts/gather_annotations.py --shards {input} --settings {params.settings:q}"
        " --out {output.captions} --report {output.report} 2> {log}"


rule modify:
    input:
        pairs=PAIRS,
        captions=CAPTIONS,
        prompt=config["annotation"]["modification"]["prompt"],
    output:
        MODIFICATION_SHARD,
    log:
        run="logs/annotation/modify_{shard}.log",
        failures="logs/annotation/modify_{shard}_failures.tsv",
    conda:
        "../envs/llm.yaml"
    threads: rule_resources("modify", "threads", 1)
    resources:
        **cluster_resources("modify", runtime=60, mem_mb=4000),
    params:
        shards=config["annotation"]["shards"],
        settings=as_json(annotation_answer_settings(config, "modification")),
        run_settings=run_only(RUN["modification"]),
        prices=run_only(RUN["prices"]),
        cache=run_only(config["annotation"]["cache_dir"]),
    shell:
        "python workflow_scripts/annotate.py --stage modification --shard {wildcards.shard} --shards {params.shards}"
        " --settings {params.settings:q} --run-settings {params.run_settings:q} --prices {params.prices:q}"
        " --prompt {input.prompt} --pairs {input.pairs} --captions {input.captions}"
        " --cache {params.cache:q} --failures {log.failures} --out {output} 2> {log.run}"


rule gather_modifications:
    input:
        annotation_shards(MODIFICATION_SHARD),
    output:
        modifications=MODIFICATIONS,
        report=MODIFICATIONS_REPORT,
    log:
        "logs/annotation/modifications.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("gather_modifications", runtime=10, mem_mb=4000),
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
    output:
        directory(FACAP),
    log:
        "logs/annotation/facap.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("facap", runtime=30, mem_mb=8000),
    params:
        sources=json.dumps(config["facap"]["sources"]),
        annotation=as_json(annotation_answers()),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/assemble_datasets.py facap --pairs {input.pairs} --captions {input.captions}"
        " --modifications {input.modifications} --sources {params.sources:q} --annotation {params.annotation:q}"
        " {params.provenance} --out {output} 2> {log}"


rule enhfashioniq:
    input:
        pairs=PAIRS,
        modifications=MODIFICATIONS,
        fashioniq=fashioniq_input(),
    output:
        directory(ENHFASHIONIQ),
    log:
        "logs/annotation/enhfashioniq.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("enhfashioniq", runtime=10, mem_mb=4000),
    params:
        fashioniq_root=fashioniq_root(),
        annotation=as_json(annotation_answers()),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/assemble_datasets.py enhfashioniq --pairs {input.pairs}"
        " --modifications {input.modifications} --fashioniq-root {params.fashioniq_root}"
        " --annotation {params.annotation:q} {params.provenance} --out {output} 2> {log}"


rule table1:
    input:
        facap=FACAP,
        fashioniq=fashioniq_input(),
    output:
        md=report(TABLE1, caption="../report/table1.rst", category="Tables"),
        csv=TABLE1.replace(".md", ".csv"),
    log:
        "logs/tables/table1.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("table1", runtime=10, mem_mb=4000),
    params:
        stem=subpath(output.md, strip_suffix=".md"),
        fashioniq_root=fashioniq_root(),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/make_table1.py --facap {input.facap} --fashioniq-root {params.fashioniq_root}"
        " {params.provenance} --out {params.stem} 2> {log}"
