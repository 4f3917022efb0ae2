# Stage: pairing (paper §3.1). CLIP embeddings in shards, gathered, then exact top-k pairing.


rule embed:
    input:
        manifest=MANIFEST,
    output:
        EMBEDDING_SHARD,
    params:
        shards=config["embedding"]["shards"],
        sources=json.dumps(config["pairing"]["sources"]),
        fashioniq_splits=json.dumps(config["pairing"]["fashioniq_splits"]),
        model=config["embedding"]["model"],
        pretrained=config["embedding"]["pretrained"],
        device=config["embedding"]["device"],
        precision=config["embedding"]["precision"],
        batch_size=config["embedding"]["batch_size"],
        workers=config["embedding"]["loader_workers"],
        seed=config["pairing"]["seed"],
    log:
        "logs/pairing/embed_{shard}.log",
    conda:
        "../envs/clip.yaml"
    threads: rule_resources("embed", "threads", 2)
    resources:
        **cluster_resources("embed", runtime=60, mem_mb=8000, gpu=1),
    shell:
        "OMP_NUM_THREADS={threads} python workflow_scripts/embed_images.py --manifest {input.manifest}"
        " --shard {wildcards.shard} --shards {params.shards} --sources {params.sources:q}"
        " --fashioniq-splits {params.fashioniq_splits:q} --model {params.model:q} --pretrained={params.pretrained:q}"
        " --device {params.device} --precision {params.precision} --batch-size {params.batch_size}"
        " --workers {params.workers} --threads {threads} --seed {params.seed} --out {output} 2> {log}"


rule embeddings:
    input:
        embedding_shards(),
    output:
        embeddings=EMBEDDINGS,
        report=EMBEDDINGS_REPORT,
    params:
        model=config["embedding"]["model"],
        pretrained=config["embedding"]["pretrained"],
        data=data_kind(),
        run_name=config["run_name"],
    log:
        "logs/pairing/embeddings.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        **cluster_resources("embeddings", runtime=30, mem_mb=8000),
    shell:
        "python workflow_scripts/gather_embeddings.py --shards {input} --out {output.embeddings}"
        " --report {output.report} --model {params.model:q} --pretrained={params.pretrained:q}"
        " --data {params.data} --run-name {params.run_name} 2> {log}"


rule pair:
    input:
        manifest=MANIFEST,
        embeddings=EMBEDDINGS,
    output:
        pairs=PAIRS,
        report=PAIRS_REPORT,
    params:
        sources=json.dumps(config["pairing"]["sources"]),
        fashioniq_splits=json.dumps(config["pairing"]["fashioniq_splits"]),
        top_k=config["pairing"]["top_k"],
        seed=config["pairing"]["seed"],
        engine=config["pairing"]["engine"],
        block=config["pairing"]["block"],
        data=data_kind(),
        run_name=config["run_name"],
    log:
        "logs/pairing/pair.log",
    conda:
        "../envs/clip.yaml"
    threads: rule_resources("pair", "threads", 2)
    resources:
        **cluster_resources("pair", runtime=120, mem_mb=16000),
    shell:
        "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " python workflow_scripts/pair_images.py --manifest {input.manifest} --embeddings {input.embeddings}"
        " --sources {params.sources:q} --fashioniq-splits {params.fashioniq_splits:q} --top-k {params.top_k}"
        " --seed {params.seed} --engine {params.engine} --block {params.block} --data {params.data}"
        " --run-name {params.run_name} --pairs {output.pairs} --report {output.report} 2> {log}"
