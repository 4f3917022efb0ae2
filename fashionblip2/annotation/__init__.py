"""Two-stage annotation (paper §3.1): a VLM captions each image, an LLM writes the modification
text between two captions. Every model answer goes through a content-keyed cache, so nothing is
paid for twice."""
