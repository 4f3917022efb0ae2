# Stage: sources. The synthetic world (embedded default) and the image manifest of all sources.


rule synthetic_world:
    output:
        world=directory(SYNTHETIC_WORLD),
        truth=GROUND_TRUTH,
    params:
        spec=json.dumps(config["synthetic"], sort_keys=True),
    log:
        "logs/sources/synthetic_world.log",
    conda:
        "../envs/data.yaml"
    threads: rule_resources("synthetic_world", "threads", 1)
    resources:
        **cluster_resources("synthetic_world", runtime=30, mem_mb=2000),
    shell:
        "python workflow_scripts/make_synthetic_world.py --spec {params.spec:q}"
        " --out {output.world} --ground-truth {output.truth} 2> {log}"


rule manifest:
    input:
        manifest_inputs,
    output:
        images=MANIFEST,
        triplets=MANIFEST_TRIPLETS,
        report=MANIFEST_REPORT,
        issues=MANIFEST_ISSUES,
    params:
        sources=json.dumps(resolved_sources(), sort_keys=True),
        verify=config["manifest"]["verify_images"],
        strict="--strict" if config["manifest"]["strict"] else "",
        run_name=config["run_name"],
    log:
        "logs/sources/manifest.log",
    conda:
        "../envs/data.yaml"
    threads: rule_resources("manifest", "threads", 2)
    resources:
        **cluster_resources("manifest", runtime=120, mem_mb=8000),
    shell:
        "python workflow_scripts/build_manifest.py --sources {params.sources:q} --verify {params.verify}"
        " {params.strict} --threads {threads} --run-name {params.run_name}"
        " --images {output.images} --triplets {output.triplets}"
        " --report {output.report} --issues {output.issues} 2> {log}"
