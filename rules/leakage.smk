# Stage: the leakage check (issue 22). FACap's candidate images against FashionIQ's val and test
# images (enhFashionIQ's among them): exact, near-duplicate, semantic; its summary is an input of the
# facap rule (leakage.action applies there), so a threshold edit replans from the check onward.
# Scripts: embed_images.py (embed_heldout: the evaluation images pairing does not embed, once, with
# the same model), check_leakage.py (leakage), make_leakage_report.py (leakage_report).


rule embed_heldout:
    input:
        manifest=MANIFEST,
        checkpoint=config["embedding"]["pretrained"] or [],
    output:
        HELDOUT_EMBEDDINGS,
    log:
        log_file("embed_heldout"),
    conda:
        "../envs/clip.yaml"
    threads: rule_threads("embed_heldout")
    resources:
        **cluster_resources("embed_heldout"),
    params:
        fashioniq_splits=json.dumps(heldout_splits()),
        model=config["embedding"]["model"],
        pretrained=config["embedding"]["pretrained"],
        precision=config["embedding"]["precision"],
        seed=config["pairing"]["seed"],
        job_options=job_option(JOB_OPTIONS["embed"]),
    shell:
        "OMP_NUM_THREADS={threads} python workflow_scripts/embed_images.py --manifest {input.manifest}"
        " --shard 0 --shards 1 --sources '[\"fashioniq\"]' --fashioniq-splits {params.fashioniq_splits:q}"
        " --model {params.model:q} --pretrained={params.pretrained:q} --precision {params.precision}"
        " --seed {params.seed} --threads {threads} {params.job_options} --out {output} 2> {log}"


rule leakage:
    input:
        manifest=MANIFEST,
        pairs=PAIRS,
        embeddings=leakage_embeddings(),
    output:
        matches=LEAKAGE_MATCHES,
        summary=LEAKAGE,
    log:
        log_file("leakage"),
    conda:
        "../envs/data.yaml"
    threads: rule_threads("leakage")
    resources:
        **cluster_resources("leakage"),
    params:
        facap_sources=json.dumps(config["facap"]["sources"]),
        settings=as_json({k: v for k, v in config["leakage"].items() if k != "action"}),
        action=config["leakage"]["action"],
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " python workflow_scripts/check_leakage.py --manifest {input.manifest} --pairs {input.pairs}"
        " --embeddings {input.embeddings} --facap-sources {params.facap_sources:q} --settings {params.settings:q}"
        " --action {params.action} {params.provenance} --matches {output.matches} --summary {output.summary}"
        " 2> {log}"


rule leakage_report:
    input:
        summary=LEAKAGE,
        matches=LEAKAGE_MATCHES,
        facap=FACAP,
        # The synthetic world's planted copies: an evaluation of the check, never an input of it.
        truth=GROUND_TRUTH if uses_synthetic_world() else [],
    output:
        report(LEAKAGE_REPORT, caption="../report/leakage.rst", category="Leakage"),
    log:
        log_file("leakage_report"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("leakage_report"),
    params:
        truth=(f"--ground-truth {GROUND_TRUTH} --world {SYNTHETIC_WORLD}" if uses_synthetic_world() else ""),
    shell:
        "python workflow_scripts/make_leakage_report.py --summary {input.summary} --matches {input.matches}"
        " --facap {input.facap} {params.truth} --out {output} 2> {log}"
