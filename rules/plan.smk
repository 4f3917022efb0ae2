# The bill before it comes: `snakemake --cores 1 plan` writes results/plan.md (and .json) for the
# config as given, before anything has run: per rule the jobs, GPU-hours at `throughput:`, API
# requests, tokens and dollars at annotation.prices (the one price rule), and disk. The data files
# are read when they exist, never made: they are no inputs (a plan must not start the workflow), and
# their sizes and times are a param, so the plan is made again when one of them appears or changes.
# Script: plan.py.


localrules:
    plan,


rule plan:
    output:
        md=PLAN,
        json=PLAN_JSON,
    log:
        log_file("plan"),
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("plan"),
    params:
        config=as_json(config),
        seen=lambda wildcards: plan_seen(),
        manifest=MANIFEST,
        pairs=PAIRS,
        captions=CAPTIONS,
        pilot_pairs=PILOT_PAIRS,
        pilot_captions=PILOT_CAPTIONS,
        pilot_modifications=PILOT_MODIFICATIONS,
        cache=config["annotation"]["cache_dir"],
        caption_prompt=config["annotation"]["caption"]["prompt"],
        modification_prompt=config["annotation"]["modification"]["prompt"],
    shell:
        "python workflow_scripts/plan.py --config {params.config:q} --manifest {params.manifest}"
        " --pairs {params.pairs} --captions {params.captions} --pilot-pairs {params.pilot_pairs}"
        " --pilot-captions {params.pilot_captions} --pilot-modifications {params.pilot_modifications}"
        " --cache {params.cache:q} --caption-prompt {params.caption_prompt:q}"
        " --modification-prompt {params.modification_prompt:q} --out {output.md} --json {output.json} 2> {log}"
