"""The demo recipe on real photos: Fashion-MNIST mosaics (Debian's dataset-fashion-mnist, MIT)."""


import pytest

from mlic.cli import main
from mlic.config import load_config
from mlic.data.mosaic import FASHION_DIR, write_mosaics
from mlic.data.registry import load_helsinki
from tests.helpers import REPO, val_lines

pytestmark = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")


@pytest.mark.slow
def test_demo_recipe_learns_real_photos_well_above_the_label_prior(tmp_path):
    from mlic.training.engine import fit

    root = write_mosaics(tmp_path / "mosaic", images=1500, seed=0)
    test = write_mosaics(tmp_path / "test", images=20, split="test", seed=1, labelled=False)
    assert not (test / "annotations").exists()
    run = tmp_path / "run"
    fit(load_config(REPO / "configs" / "demo.yaml", [f"data.root={root}", f"run.output_dir={run}"]))
    val = val_lines(run)
    prior = load_helsinki(root).targets.mean(0).mean()  # the mAP of a constant (label-prior) predictor
    best = max(line["mAP"] for line in val)
    assert best >= 2 * prior and best >= prior + 0.2, (best, prior)
    out = tmp_path / "results.txt"
    assert main(["predict", str(run / "model"), str(test), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20
