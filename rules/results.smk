# Stage: the paper's experiment tables (3, 4, 5) and figures (5, 6) from the evaluations. Each is
# its own target: `snakemake --cores 2 results/tables/table5.md` builds that table and what it needs.


# Small tables and figures: on a cluster they run in the main Snakemake process, not as jobs.
localrules:
    table,
    figure5,
    figure6,


rule table:
    input:
        lambda wc: table_inputs(int(wc.number)),
    output:
        md=report("results/tables/table{number}.md", caption="../report/table.rst", category="Tables"),
        csv="results/tables/table{number}.csv",
        tex="results/tables/table{number}.tex",
    log:
        "logs/results/table{number}.log",
    wildcard_constraints:
        number="[345]",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("table", runtime=5, mem_mb=1000),
    params:
        spec=lambda wc: json.dumps(config["experiments"][f"table{wc.number}"]),
        variants=table_variants,
        stem=subpath(output.md, strip_suffix=".md"),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/make_results.py table{wildcards.number} --spec {params.spec:q}"
        " --variants {params.variants:q} --eval-root results/eval {params.provenance} --out {params.stem} 2> {log}"


rule figure5:
    input:
        evaluations("stage1", [name for _, name in figure5_variants()]),
    output:
        png=report(FIGURE5, caption="../report/figure5.rst", category="Figures"),
        csv=FIGURE5.replace(".png", ".csv"),
    log:
        "logs/results/figure5.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("figure5", runtime=5, mem_mb=1000),
    params:
        spec=json.dumps({"variants": figure5_variants()}),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/make_results.py figure5 --spec {params.spec:q} --eval-root results/eval"
        " {params.provenance} --out {output.png} 2> {log}"


rule figure6:
    input:
        rankings=expand(
            RANKINGS,
            stage=config["experiments"]["figure6"]["stage"],
            variant=config["experiments"]["figure6"]["variant"],
            dataset=EVAL_DATASETS,
        ),
        manifest=MANIFEST,
    output:
        report(FIGURE6, caption="../report/figure6.rst", category="Figures"),
    log:
        "logs/results/figure6.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("figure6", runtime=5, mem_mb=2000),
    params:
        spec=json.dumps(config["experiments"]["figure6"]),
        provenance=run_only(RUN["provenance"]),
    shell:
        "python workflow_scripts/make_results.py figure6 --spec {params.spec:q} --eval-root results/eval"
        " --manifest {input.manifest} {params.provenance} --out {output} 2> {log}"
