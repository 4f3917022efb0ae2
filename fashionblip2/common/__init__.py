"""Pieces every stage uses: atomic file writing, bad-input bookkeeping, provenance, opening images, colour names."""
