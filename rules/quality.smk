# Stage: quality evaluation (paper §3.2, Table 2). A seeded sample per dataset, an annotation kit
# for people (results/quality/kit/), and Table 2 from their score files; on the synthetic world,
# automatic annotators score the sample from the ground truth when no score files are listed.
# Scripts: make_quality_sample.py, make_annotation_kit.py (quality_kit), auto_annotate.py, make_table2.py.


rule quality_sample:
    input:
        unpack(quality_sample_inputs),
    output:
        directory(QUALITY_SAMPLE),
    log:
        log_file("quality_sample"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("quality_sample"),
    params:
        datasets=quality_sample_arguments,
        split=config["quality"]["fashioniq_split"],
        categories=json.dumps(config["sources"]["fashioniq"]["categories"]),
        size=config["quality"]["sample_size"],
        seed=config["quality"]["seed"],
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_quality_sample.py --manifest {input.manifest} {params.datasets}"
        " --fashioniq-split {params.split} --categories {params.categories:q} --size {params.size}"
        " --seed {params.seed} {params.provenance} --out {output} 2> {log}"


rule quality_kit:
    input:
        sample=QUALITY_SAMPLE,
        manifest=MANIFEST,
    output:
        directory(QUALITY_KIT),
    log:
        log_file("quality_kit"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("quality_kit"),
    params:
        annotators=config["quality"]["annotators"],
        seed=config["quality"]["seed"],
        image_size=config["quality"]["image_size"],
    shell:
        "python workflow_scripts/make_annotation_kit.py --sample {input.sample} --manifest {input.manifest}"
        " --annotators {params.annotators} --seed {params.seed} --image-size {params.image_size}"
        " --out {output} 2> {log}"


# An evaluation rule: it may read the synthetic world's ground truth.
rule auto_annotate:
    input:
        sample=QUALITY_SAMPLE,
        manifest=MANIFEST,
        truth=GROUND_TRUTH,
    output:
        directory(QUALITY_AUTOMATIC),
    log:
        log_file("auto_annotate"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("auto_annotate"),
    params:
        annotators=config["quality"]["automatic"]["annotators"],
        noise=config["quality"]["automatic"]["noise"],
        seed=config["quality"]["seed"],
    shell:
        "python workflow_scripts/auto_annotate.py --sample {input.sample} --manifest {input.manifest}"
        " --ground-truth {input.truth} --annotators {params.annotators} --noise {params.noise}"
        " --seed {params.seed} --out {output} 2> {log}"


rule table2:
    input:
        sample=QUALITY_SAMPLE,
        annotations=lambda wildcards: quality_annotations(),
    output:
        md=report(TABLE2_FILES["md"], caption="../report/table2.rst", category="Tables"),
        csv=TABLE2_FILES["csv"],
        agreement=TABLE2_FILES["agreement"],
    log:
        log_file("table2"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("table2"),
    params:
        automatic="--automatic" if uses_automatic_annotators() else "",
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_table2.py --sample {input.sample} --annotations {input.annotations}"
        " {params.automatic} {params.provenance} --md {output.md} --csv {output.csv} --agreement {output.agreement}"
        " 2> {log}"
