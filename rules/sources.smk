# Stage: sources. The synthetic world (embedded default), downloads of the real datasets, and the
# image manifest of all sources.
# Scripts: make_synthetic_world.py, download_source.py, build_manifest.py (each named for what it
# does; one rule each).


# Cluster nodes often have no internet: downloads run where Snakemake itself runs.
localrules:
    download,


rule download:
    output:
        directory(DOWNLOADED_SOURCE),
    log:
        log_file("download", "{source}"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("download"),
    params:
        entries=lambda wildcards: json.dumps(download_entries(wildcards)),
        partial_dir=job_option(config["downloads"]["partial_dir"]),
        timeout=job_option(config["downloads"]["timeout_s"]),
        retries=job_option(config["downloads"]["retries"]),
        backoff=job_option(config["downloads"]["backoff_s"]),
    shell:
        "python workflow_scripts/download_source.py --source {wildcards.source} --entries {params.entries:q}"
        " --partial-dir {params.partial_dir:q} --timeout {params.timeout}"
        " --retries {params.retries} --backoff {params.backoff} --out {output} 2> {log}"


rule synthetic_world:
    output:
        world=directory(SYNTHETIC_WORLD),
        truth=GROUND_TRUTH,
    log:
        log_file("synthetic_world"),
    conda:
        "../envs/data.yaml"
    threads: rule_threads("synthetic_world")
    resources:
        **cluster_resources("synthetic_world"),
    params:
        spec=json.dumps(config["synthetic"], sort_keys=True),
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
    log:
        log_file("manifest"),
    conda:
        "../envs/data.yaml"
    threads: rule_threads("manifest")
    resources:
        **cluster_resources("manifest"),
    params:
        sources=json.dumps(resolved_sources(), sort_keys=True),
        verify=config["manifest"]["verify_images"],
        strict="--strict" if config["manifest"]["strict"] else "",
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/build_manifest.py --sources {params.sources:q} --verify {params.verify}"
        " {params.strict} --threads {threads} {params.provenance}"
        " --images {output.images} --triplets {output.triplets}"
        " --report {output.report} --issues {output.issues} 2> {log}"
