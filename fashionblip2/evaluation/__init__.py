"""Stage: evaluation (rules/evaluation.smk): the FashionIQ protocol and retrieval with a trained model."""
