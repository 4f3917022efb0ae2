import numpy as np
import pytest
import torch
from PIL import Image

from fashionblip2.common.issues import BadInputError
from fashionblip2.pairing.embedding import embed_images, load_image_encoder
from fashionblip2.pairing.embedding_file import EmbeddingFile, shard_bounds


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (10, 10, 10)]):
        p = root / f"{i}.png"
        Image.new("RGB" if i != 3 else "L", (50, 70), colour if i != 3 else 120).save(p)
        paths.append(str(p))
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return paths, str(broken)


def test_random_init_embeddings_are_unit_vectors_and_bad_files_are_skipped(images):
    paths, broken = images
    torch.manual_seed(0)
    model, preprocess = load_image_encoder("FACap-tiny-ViT", None, "cpu")
    result = embed_images([paths[0], broken, *paths[1:]], model, preprocess, batch_size=2, progress=False)
    assert result.indices.tolist() == [0, 2, 3, 4, 5]
    assert list(result.failures) == [1] and "Error" in result.failures[1]
    assert result.vectors.shape == (5, 64) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-5)


def test_a_checkpoint_file_loads_through_open_clip(images, tmp_path):
    paths, _ = images
    torch.manual_seed(1)
    model, preprocess = load_image_encoder("FACap-tiny-ViT", None, "cpu")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    before = embed_images(paths, model, preprocess, progress=False).vectors
    torch.manual_seed(2)  # a different random init, which the checkpoint must overwrite
    loaded, preprocess2 = load_image_encoder("FACap-tiny-ViT", checkpoint, "cpu")
    after = embed_images(paths, loaded, preprocess2, progress=False).vectors
    np.testing.assert_allclose(after, before, atol=1e-6)
    torch.manual_seed(2)
    fresh, _ = load_image_encoder("FACap-tiny-ViT", None, "cpu")
    assert not np.allclose(embed_images(paths, fresh, preprocess2, progress=False).vectors, before, atol=1e-3)


def test_hub_tags_and_unknown_models_are_refused():
    with pytest.raises(BadInputError, match="never downloads weights"):
        load_image_encoder("ViT-B-32", "laion2b_s34b_b79k", "cpu")
    with pytest.raises(BadInputError, match="not an open_clip architecture"):
        load_image_encoder("ViT-Q-99", None, "cpu")


def test_shards_cover_every_row_once():
    for n in (0, 1, 7, 100):
        for shards in (1, 3, 8):
            rows = [r for s in range(shards) for r in range(*shard_bounds(n, shards, s))]
            assert rows == list(range(n))
    with pytest.raises(ValueError):
        shard_bounds(10, 2, 2)


def test_embedding_file_round_trip(tmp_path):
    parts = [
        EmbeddingFile(np.array(["a", "b"]), np.ones((2, 3), np.float32), np.array(["x"]), np.array(["broken"])),
        EmbeddingFile(np.array(["c"]), np.zeros((1, 3), np.float32), np.zeros(0, str), np.zeros(0, str)),
    ]
    merged = EmbeddingFile.concatenate(parts)
    merged.save(tmp_path / "e.npz")
    back = EmbeddingFile.load(tmp_path / "e.npz")
    assert back.image_ids.tolist() == ["a", "b", "c"] and back.vectors.shape == (3, 3)
    assert back.failed_ids.tolist() == ["x"] and back.failed_reasons.tolist() == ["broken"]
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]
