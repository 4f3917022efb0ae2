"""Stage: pairing (rules/pairing.smk): CLIP image embeddings, their files, and the exact top-k pairing."""
