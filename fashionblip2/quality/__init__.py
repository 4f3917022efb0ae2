"""Stage: quality evaluation (rules/quality.smk, paper §3.2): the sample, the annotation kit for people,
the automatic annotators of the synthetic world, and Table 2."""
