"""FACap dataset construction and the FashionBLIP-2 model for fashion composed image retrieval."""

__version__ = "0.1.0"
