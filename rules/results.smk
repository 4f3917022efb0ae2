# Stage: the paper's experiment tables (3, 4, 5) and figures (5, 6) from the evaluations. Each is
# its own target: `snakemake --cores 2 results/tables/table5.md` builds that table and what it needs.
# Scripts: make_results.py for table, figure5 and figure6 (they read the same evaluation files).


# Small tables and figures: on a cluster they run in the main Snakemake process, not as jobs.
localrules:
    table,
    figure5,
    figure6,


rule table:
    input:
        unpack(table_inputs),
    output:
        md=report(EXPERIMENT_TABLE_FILES["md"], caption="../report/table.rst", category="Tables"),
        csv=EXPERIMENT_TABLE_FILES["csv"],
        tex=EXPERIMENT_TABLE_FILES["tex"],
        differences=EXPERIMENT_TABLE_FILES["differences"],
    log:
        log_file("table", "{number}"),
    wildcard_constraints:
        number="[3456]",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("table"),
    params:
        spec=lambda wc: json.dumps(config["experiments"][f"table{wc.number}"]),
        variants=table_variants,
        bootstrap=json.dumps(config["evaluation"]["bootstrap"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_results.py table{wildcards.number} --spec {params.spec:q}"
        " --variants {params.variants:q} --results {input.results} --rankings {input.rankings}"
        " --bootstrap {params.bootstrap:q} {params.provenance} --md {output.md} --csv {output.csv}"
        " --tex {output.tex} --differences {output.differences} 2> {log}"


rule figure5:
    input:
        **evaluations([("stage1", name) for _, name in figure5_variants()]),
    output:
        png=report(FIGURE5_FILES["png"], caption="../report/figure5.rst", category="Figures"),
        csv=FIGURE5_FILES["csv"],
        differences=FIGURE5_FILES["differences"],
    log:
        log_file("figure5"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("figure5"),
    params:
        spec=json.dumps({"variants": figure5_variants(), "caption": figure5_caption()}),
        bootstrap=json.dumps(config["evaluation"]["bootstrap"]),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_results.py figure5 --spec {params.spec:q} --results {input.results}"
        " --rankings {input.rankings} --bootstrap {params.bootstrap:q} {params.provenance} --out {output.png}"
        " --csv {output.csv} --differences {output.differences} 2> {log}"


rule figure6:
    input:
        # Rankings drawn from one model: the first seed's.
        **evaluations(
            [(config["experiments"]["figure6"]["stage"], config["experiments"]["figure6"]["variant"])],
            seed_list=[first_seed()],
        ),
        manifest=MANIFEST,
    output:
        report(FIGURE6, caption="../report/figure6.rst", category="Figures"),
    log:
        log_file("figure6"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("figure6"),
    params:
        spec=json.dumps(config["experiments"]["figure6"]),
        # Figure 6 draws rankings, no intervals: the bootstrap setting does not change it.
        bootstrap=job_option(json.dumps(config["evaluation"]["bootstrap"])),
        provenance=job_option(JOB_OPTIONS["provenance"]),
    shell:
        "python workflow_scripts/make_results.py figure6 --spec {params.spec:q} --results {input.results}"
        " --rankings {input.rankings} --bootstrap {params.bootstrap:q} --manifest {input.manifest}"
        " {params.provenance} --out {output} 2> {log}"
