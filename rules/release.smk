# The release (issue 23): FACap and the models of release.variants at release.stage, in folders the
# Hugging Face ecosystem loads as they are (datasets.load_dataset("release/facap"),
# FashionBLIP2.from_pretrained("release/model/<variant>")), each with its card: the dataset card from
# FACap's data card (backends, scores, leakage, provenance), a model card with the variant's rows of
# Tables 3-5 and what each stage trained on. A named target (`snakemake --cores 1 release`), not
# part of `all`; nothing is uploaded: the cards show the `hf upload` command. A local rule: it
# copies files, on the machine the upload will start from.
# Script: make_release.py.


localrules:
    release,


rule release:
    input:
        facap=FACAP,
        manifest=MANIFEST,
        models=release_models()["models"],
        # The stage-1 models the released stage-2 ones started from: what stage 1 trained on.
        starts=release_models()["starts"],
        tables=[EXPERIMENT_TABLE_FILES["csv"].format(number=n) for n in (3, 4, 5)],
    output:
        facap=directory(RELEASE_FACAP),
        models=[directory(RELEASE_MODEL.format(variant=v)) for v in config["release"]["variants"]],
    log:
        log_file("release"),
    conda:
        "../envs/train.yaml"
    resources:
        **cluster_resources("release"),
    params:
        roots=as_json(source_folders()),
        namespace=config["release"]["namespace"],
        # Each variant's folder is written inside it: the parent of the declared folders.
        model_out=lambda wildcards, output: os.path.dirname(output.models[0]),
    shell:
        "python workflow_scripts/make_release.py --facap {input.facap} --manifest {input.manifest}"
        " --source-roots {params.roots:q} --models {input.models} --stage1-models {input.starts}"
        " --tables {input.tables} --namespace={params.namespace:q} --facap-out {output.facap}"
        " --model-out {params.model_out} 2> {log}"
