"""Stage: training (rules/training.smk): one trainer, the paper's runs, the gradient cache and data parallelism."""
