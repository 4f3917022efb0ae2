"""Stage: results (rules/results.smk): Tables 3-5, the figures, and the writing of every table."""
