"""Readers of the real dataset formats (Fashion200k, DeepFashion-MultiModal, FashionIQ) and of a
plain user catalogue. The same code reads the synthetic world and the real downloads."""

from fashionblip2.sources.catalogue import read_catalogue
from fashionblip2.sources.deepfashion import read_deepfashion
from fashionblip2.sources.fashion200k import read_fashion200k
from fashionblip2.sources.fashioniq import (
    check_triplet_images,
    read_fashioniq_images,
    read_fashioniq_triplets,
)
from fashionblip2.sources.records import ImageRecord

__all__ = [
    "ImageRecord",
    "check_triplet_images",
    "read_catalogue",
    "read_deepfashion",
    "read_fashion200k",
    "read_fashioniq_images",
    "read_fashioniq_triplets",
]
