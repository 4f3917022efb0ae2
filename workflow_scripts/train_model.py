#!/usr/bin/env python
"""Train one FashionBLIP-2 variant with one seed: stage 1 on FACap (L_CIR, + L_CTR if the variant has
it), or stage 2 on FashionIQ train (L_CIR only, image encoder and adapters frozen, captions
randomised). Triplets whose images are missing are skipped and counted. A killed run resumes from
its checkpoint with the same data order.

Both stages validate on FashionIQ val as the evaluate rule evaluates (every validate_every steps of
the recipe, and after the last step; SPRC's "best epoch" numbers) and write the curve
(--validation-curve) and its best point by Avg (--best-out: the evaluate rule's JSON and rankings,
with "checkpoint": "best" and its step). The model saved is the last step's.

Examples:
    SPEC='{"adapters": true, "losses": ["cir", "ctr"], "matching": "multihead"}'
    MODEL='{"adapter_factor": 16, "head_dim": 256, "image_mode": "rgb", "init_temperature": 0.07,
        "max_text_length": 64, "num_heads": 12}'
    JOB_OPTIONS='{"cache_image_features": true, "device": "auto", "gradient_checkpointing": false}'
    E=results/eval/stage1/cir_ctr_mh/seed0
    python workflow_scripts/train_model.py --stage stage1 --variant cir_ctr_mh --seed 0 --spec "$SPEC" \\
        --model-settings "$MODEL" \\
        --start models/backbone --tokenizer models/tokenizer --manifest data/manifest/images.parquet \\
        --facap data/facap --fashioniq-root data/synthetic/world/fashioniq \\
        --categories '["dress", "shirt", "toptee"]' --text-cleanup none \\
        --recipe '{"steps": 200, "batch_size": 32, "lr": 0.0005, "precision": "fp32", "validate_every": 50}' \\
        --job-options "$JOB_OPTIONS" --checkpoints checkpoints/stage1/cir_ctr_mh/seed0 --threads 1 \\
        --validation-batch-size 64 --validation-curve $E/validation.json \\
        --best-out $E/fashioniq_best.json $E/fashioniq_best_rankings.parquet \\
        --data synthetic --run-name default --out models/stage1/cir_ctr_mh/seed0
    E=results/eval/stage2/cir_ctr_mh/seed0
    python workflow_scripts/train_model.py --stage stage2 --variant cir_ctr_mh --seed 0 --spec "$SPEC" \\
        --model-settings "$MODEL" \\
        --start models/stage1/cir_ctr_mh/seed0 --tokenizer models/tokenizer --manifest data/manifest/images.parquet \\
        --fashioniq-root data/synthetic/world/fashioniq --categories '["dress", "shirt", "toptee"]' \\
        --text-cleanup none \\
        --recipe '{"steps": 100, "batch_size": 32, "lr": 0.0002, "precision": "fp32", "validate_every": 25}' \\
        --job-options "$JOB_OPTIONS" --checkpoints checkpoints/stage2/cir_ctr_mh/seed0 --threads 1 \\
        --validation-batch-size 64 --validation-curve $E/validation.json \\
        --best-out $E/fashioniq_best.json $E/fashioniq_best_rankings.parquet \\
        --data synthetic --run-name default --out models/stage2/cir_ctr_mh/seed0
"""

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pandas as pd  # noqa: E402

from fashionblip2.common.issues import InputReport  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.common.runtime import seed_everything, set_threads  # noqa: E402
from fashionblip2.datasets.caption_text import TEXT_CLEANUPS  # noqa: E402
from fashionblip2.datasets.triplets import read_facap, read_fashioniq_split  # noqa: E402
from fashionblip2.model.processing import ImageStore  # noqa: E402
from fashionblip2.model.tokenization import load_tokenizer  # noqa: E402
from fashionblip2.sources.manifest import manifest_paths  # noqa: E402
from fashionblip2.training.distributed import world  # noqa: E402
from fashionblip2.training.runs import (  # noqa: E402
    ModelSettings,
    Variant,
    build_model,
    run_info,
    save_run,
    train_cir,
    train_config,
)
from fashionblip2.training.validation import FashionIQValidator, write_validation_outputs  # noqa: E402
from fashionblip2.workflow_cli import add_training_arguments, run_main, setup_logging  # noqa: E402

log = logging.getLogger("train_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stage",
        choices=["stage1", "stage2"],
        required=True,
        help="stage1: on FACap; stage2: fine-tuning on FashionIQ",
    )
    parser.add_argument("--variant", required=True, help="the variant's name (recorded)")
    parser.add_argument(
        "--seed", type=int, required=True, help="the run's seed (experiments.seeds); replaces any seed in --recipe"
    )
    parser.add_argument("--spec", required=True, help="JSON: the variant (losses, adapters, matching, facap_fraction)")
    parser.add_argument(
        "--model-settings",
        required=True,
        help="JSON: adapter_factor, num_heads, head_dim, max_text_length, similarity_scale, init_temperature, "
        "image_mode (images.mode)",
    )
    parser.add_argument("--start", required=True, help="a BLIP-2 checkpoint folder, or (stage 2) a stage-1 model")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--facap", help="stage 1: the FACap folder")
    parser.add_argument(
        "--fashioniq-root",
        required=True,
        help="the FashionIQ folder: val (validation, both stages) and, stage 2, train captions",
    )
    parser.add_argument("--categories", required=True, help="JSON list of FashionIQ categories")
    parser.add_argument(
        "--text-cleanup",
        choices=TEXT_CLEANUPS,
        required=True,
        help="text.cleanup: none (texts as they are) | sprc (SPRC's: lower-cased, punctuation out, 50 words)",
    )
    parser.add_argument(
        "--validation-batch-size",
        type=int,
        required=True,
        help="gallery encoding batch of the validation (evaluation.batch_size, as the evaluate rule)",
    )
    parser.add_argument(
        "--validation-curve", required=True, help="JSON: every FashionIQ-val point of the run, the best and last step"
    )
    parser.add_argument(
        "--best-out",
        nargs=2,
        metavar=("JSON", "PARQUET"),
        required=True,
        help="the best point on FashionIQ val (by Avg): the evaluate rule's summary JSON and per-query rankings",
    )
    add_training_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    set_threads(args.threads)
    variant = Variant.from_spec(json.loads(args.spec))
    training = json.loads(args.job_options)
    cfg = train_config(json.loads(args.recipe), training, seed=args.seed)
    categories = json.loads(args.categories)
    manifest = pd.read_parquet(args.manifest)
    report = InputReport()
    stage = int(args.stage.removeprefix("stage"))  # the rules' and models/<stage>/ name, as a number
    if stage == 1:
        if not args.facap:
            parser.error("stage 1 needs --facap")
        if variant.facap_fraction == 0:
            parser.error(f"variant {args.variant} has facap_fraction 0: it has no stage 1")
        data = read_facap(args.facap, manifest, report)
        full = len(data)
        if variant.facap_fraction < 1:
            data = data.fraction(variant.facap_fraction, cfg.seed)
            cfg = replace(cfg, steps=variant.stage1_steps(cfg.steps, len(data), full))
        counts = {"facap_triplets": full, "used": len(data), "fraction": variant.facap_fraction}
    else:
        available = set(manifest["image_id"])
        data = read_fashioniq_split(args.fashioniq_root, "train", categories, available, report)
        counts = {"fashioniq_train_triplets": len(data)}
    counts["skipped"] = report.summary()
    if report.count("skipped"):
        log.warning("%d triplet(s) skipped: %s", report.count("skipped"), report.summary())
    if len(data) < cfg.batch_size:
        raise SystemExit(f"{len(data)} usable triplets, fewer than one batch of {cfg.batch_size}")
    tokenizer = load_tokenizer(args.tokenizer)
    seed_everything(cfg.seed)
    model = build_model(args.start, variant, ModelSettings.from_params(json.loads(args.model_settings)), stage)
    log.info(
        "%s, variant %s: %d triplets, %d steps; parameters %s",
        args.stage,
        args.variant,
        len(data),
        cfg.steps,
        model.parameter_counts(),
    )
    store = ImageStore.for_model(manifest_paths(manifest), model)  # its image size and images.mode
    validator = FashionIQValidator.from_fashioniq(
        args.fashioniq_root,
        categories,
        manifest,
        store,
        tokenizer,
        args.validation_batch_size,
        text_cleanup=args.text_cleanup,
    )
    with_captions = stage == 1 and "ctr" in variant.losses
    train_cir(
        model,
        data,
        store,
        tokenizer,
        cfg,
        args.checkpoints,
        with_captions=with_captions,
        randomise=stage == 2,
        text_cleanup=args.text_cleanup,
        cache_features=training["cache_image_features"],
        validate=validator,
    )
    if world()[0] != 0:
        return  # rank 0 writes the outputs
    # Before save_run, which removes the checkpoint folder the points are kept in.
    curve = write_validation_outputs(
        args.checkpoints,
        args.validation_curve,
        *args.best_out,
        model=args.out,
        variant=args.variant,
        stage=args.stage,
        seed=cfg.seed,
        skipped=validator.skipped,
        provenance=provenance(args.data, args.run_name),
    )
    info = run_info(
        args.stage,
        variant,
        cfg,
        counts,
        name=args.variant,
        start=args.start,
        text_cleanup=args.text_cleanup,
        parameters=model.parameter_counts(),
        validation={k: curve[k] for k in ("selected_by", "best_step", "last_step")},
        provenance=provenance(args.data, args.run_name),
    )
    save_run(model.cpu(), tokenizer, args.out, args.checkpoints, info)


if __name__ == "__main__":
    run_main(main)
