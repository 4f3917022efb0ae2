# Stage: pairing (paper §3.1). CLIP embeddings in shards, gathered, then exact top-k pairing.
# Scripts: embed_images.py (embed), gather_embeddings.py, pair_images.py (pair).


rule embed:
    input:
        manifest=MANIFEST,
        checkpoint=config["embedding"]["pretrained"] or [],
    output:
        EMBEDDING_SHARD,
    log:
        log_file("embed", "{shard}"),
    conda:
        "../envs/clip.yaml"
    threads: rule_threads("embed")
    resources:
        **cluster_resources("embed", runtime=embed_runtime),
    params:
        shards=config["embedding"]["shards"],
        sources=json.dumps(config["pairing"]["sources"]),
        fashioniq_splits=json.dumps(config["pairing"]["fashioniq_splits"]),
        model=config["embedding"]["model"],
        pretrained=config["embedding"]["pretrained"],
        precision=config["embedding"]["precision"],
        seed=config["pairing"]["seed"],
        job_options=job_option(JOB_OPTIONS["embed"]),
    shell:
        "OMP_NUM_THREADS={threads} python workflow_scripts/embed_images.py --manifest {input.manifest}"
        " --shard {wildcards.shard} --shards {params.shards} --sources {params.sources:q}"
        " --fashioniq-splits {params.fashioniq_splits:q} --model {params.model:q} --pretrained={params.pretrained:q}"
        " --precision {params.precision} --seed {params.seed} --threads {threads} {params.job_options} --out {output} 2> {log}"


rule gather_embeddings:
    input:
        embedding_shards(),
    output:
        embeddings=EMBEDDINGS,
        report=EMBEDDINGS_REPORT,
    log:
        log_file("gather_embeddings"),
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **cluster_resources("gather_embeddings"),
    params:
        model=config["embedding"]["model"],
        pretrained=config["embedding"]["pretrained"],
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/gather_embeddings.py --shards {input} --out {output.embeddings}"
        " --report {output.report} --model {params.model:q} --pretrained={params.pretrained:q}"
        " {params.provenance} 2> {log}"


rule pair:
    input:
        manifest=MANIFEST,
        embeddings=EMBEDDINGS,
    output:
        pairs=PAIRS,
        report=PAIRS_REPORT,
    log:
        log_file("pair"),
    conda:
        "../envs/clip.yaml"
    threads: rule_threads("pair")
    resources:
        **cluster_resources("pair"),
    params:
        sources=json.dumps(config["pairing"]["sources"]),
        fashioniq_splits=json.dumps(config["pairing"]["fashioniq_splits"]),
        top_k=config["pairing"]["top_k"],
        seed=config["pairing"]["seed"],
        engine=config["pairing"]["engine"],
        block=job_option(config["pairing"]["block"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " python workflow_scripts/pair_images.py --manifest {input.manifest} --embeddings {input.embeddings}"
        " --sources {params.sources:q} --fashioniq-splits {params.fashioniq_splits:q} --top-k {params.top_k}"
        " --seed {params.seed} --engine {params.engine} --block {params.block} {params.provenance}"
        " --pairs {output.pairs} --report {output.report} 2> {log}"
