# Stage: evaluation with the FashionIQ protocol (as SPRC and CLIP4Cir run it) on FashionIQ val and enhFashionIQ,
# for every seed's model, and the gallery index of `fashionblip2 search` (the first seed's model).
# Scripts: evaluate_model.py (evaluate), build_search_index.py (search_index).


rule evaluate:
    input:
        model=MODEL,
        manifest=MANIFEST,
        fashioniq=fashioniq_input(),
        enhfashioniq=ENHFASHIONIQ,
    output:
        fashioniq=dataset_file(EVALUATION, "fashioniq"),
        fashioniq_rankings=dataset_file(RANKINGS, "fashioniq"),
        enhfashioniq=dataset_file(EVALUATION, "enhfashioniq"),
        enhfashioniq_rankings=dataset_file(RANKINGS, "enhfashioniq"),
    log:
        log_file("evaluate", "{stage}_{variant}_seed{seed}"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("evaluate")
    resources:
        **cluster_resources("evaluate", runtime=inference_runtime),
    params:
        fashioniq_root=fashioniq_root(),
        categories=json.dumps(config["sources"]["fashioniq"]["categories"]),
        text_cleanup=config["text"]["cleanup"],
        job_options=job_option(JOB_OPTIONS["evaluation"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/evaluate_model.py --model {input.model} --manifest {input.manifest}"
        " --fashioniq-root {params.fashioniq_root} --enhfashioniq {input.enhfashioniq}"
        " --categories {params.categories:q} --text-cleanup {params.text_cleanup} {params.job_options} --threads {threads} {params.provenance}"
        " --fashioniq-out {output.fashioniq} {output.fashioniq_rankings}"
        " --enhfashioniq-out {output.enhfashioniq} {output.enhfashioniq_rankings} 2> {log}"


rule search_index:
    input:
        model=search_model,
        manifest=MANIFEST,
    output:
        directory(SEARCH_INDEX),
    log:
        log_file("search_index", "{stage}_{variant}"),
    conda:
        "../envs/train.yaml"
    threads: rule_threads("search_index")
    resources:
        **cluster_resources("search_index", runtime=inference_runtime),
    params:
        sources=json.dumps(config["search"]["gallery_sources"]),
        splits=json.dumps(config["search"]["gallery_splits"]),
        job_options=job_option(JOB_OPTIONS["evaluation"]),
    shell:
        "python workflow_scripts/build_search_index.py --model {input.model} --manifest {input.manifest}"
        " --sources {params.sources:q} --splits {params.splits:q} {params.job_options} --threads {threads}"
        " --out {output} 2> {log}"
