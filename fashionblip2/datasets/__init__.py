"""Stage: the released datasets (rules/annotation.smk's facap, enhfashioniq, table1): FACap and
enhFashionIQ assembled from the annotation outputs, the triplet sets read back, and Table 1."""
