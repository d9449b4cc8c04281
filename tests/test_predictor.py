"""`mlic.load_model(MODEL_DIR).predict(images)`, as users call it from their own code: paths, PIL images
and uint8 tensors give the same answer, in batches of any size, and the same as the run's own evaluation
of its validation split (`mlic evaluate`, the engine's loader and transform)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mlic
from mlic.errors import DataError, MlicError
from mlic.serving.inference import evaluate_model
from tests.helpers import REPO


@pytest.fixture(scope="module")
def trained(trained_demo):
    return trained_demo


def test_paths_pil_images_and_tensors_predict_alike_and_as_evaluate_does(trained):
    summary, per_label, probs, targets, dataset, rows = evaluate_model(trained / "model", None, "val")
    paths = [dataset.decode.paths[r] for r in rows[:20]]
    model = mlic.load_model(trained / "model", device="cpu", batch_size=7)  # batches of 7, 7 and 6
    by_path = model.predict(paths)
    assert by_path.label_names == dataset.label_names and by_path.probabilities.shape == (20, 14)
    np.testing.assert_allclose(by_path.probabilities, probs[:20], atol=1e-5)  # what the run's evaluation saw

    pil = [Image.open(p) for p in paths]
    np.testing.assert_allclose(model.predict(pil).probabilities, by_path.probabilities, atol=1e-6)
    tensors = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
    np.testing.assert_allclose(model.predict(tensors).probabilities, by_path.probabilities, atol=1e-6)
    batch = torch.stack(tensors)  # (N, 3, H, W) uint8: one call, split internally
    np.testing.assert_allclose(model.predict(batch, batch_size=64).probabilities, by_path.probabilities, atol=1e-6)
    one = model.predict(paths[3])
    np.testing.assert_allclose(one.probabilities[0], by_path.probabilities[3], atol=1e-6)

    exported = json.loads((trained / "model" / "config.json").read_text())["thresholds"]
    assert np.array_equal(by_path.thresholds, exported)
    assert np.array_equal(by_path.decisions, by_path.probabilities >= np.asarray(exported))
    assert by_path.labels()[0] == [n for n, d in zip(by_path.label_names, by_path.decisions[0]) if d]
    assert set(by_path.as_dicts()[0]) == set(dataset.label_names)


def test_grayscale_and_transparent_images_are_converted_as_training_converts_files(trained, tmp_path):
    model = mlic.load_model(trained / "model", device="cpu")
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))  # fully transparent: the background colour
    rgba.save(tmp_path / "a.png")
    gray = Image.new("L", (50, 50), 77)
    gray.save(tmp_path / "g.png")
    from_files = model.predict([tmp_path / "a.png", tmp_path / "g.png"]).probabilities
    in_memory = model.predict([rgba, gray]).probabilities
    np.testing.assert_allclose(in_memory, from_files, atol=1e-6)
    as_array = model.predict(np.full((50, 50), 77, np.uint8)).probabilities  # (H, W) grayscale array
    np.testing.assert_allclose(as_array[0], from_files[1], atol=1e-6)


def test_wrong_inputs_are_clear_errors(trained):
    model = mlic.load_model(trained / "model", device="cpu")
    with pytest.raises(MlicError, match="uint8"):
        model.predict(torch.rand(3, 32, 32))
    with pytest.raises(MlicError, match=r"\(3, H, W\)"):
        model.predict(torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(DataError, match="nothing.jpg"):
        model.predict(["nothing.jpg"])


def test_the_readme_example_runs(trained, demo_dir, capsys):
    """README's five lines, on this run's model and two demo images."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("```python\nimport mlic\n", 1)[1].split("```", 1)[0]
    code = code.replace('"runs/vit/model"', repr(str(trained / "model")))
    code = code.replace('["a.jpg", "b.jpg"]', repr([str(demo_dir / "images" / "im1.jpg"), str(demo_dir / "images" / "im2.jpg")]))
    exec("import mlic\n" + code, {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("['baby', 'bird'") and printed[-1].startswith("[[")


@pytest.mark.gpu
def test_on_the_gpu_by_default_and_as_on_the_cpu(trained):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    images = [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(5)]
    gpu = mlic.load_model(trained / "model")
    assert gpu.device.type == "cuda"
    cpu = mlic.load_model(trained / "model", device="cpu")
    np.testing.assert_allclose(gpu.predict(images).probabilities, cpu.predict(images).probabilities, atol=1e-4)
