"""The synthetic fashion world: rendered garments written in the real datasets' formats.

It exists so that every stage of the workflow runs for real on a laptop and can be checked
against ground truth. Nothing here is read by the dataset-building or training stages except
through the same readers that read the real datasets.
"""

from fashionblip2.synthetic.world import WorldSpec, generate_world

__all__ = ["WorldSpec", "generate_world"]
