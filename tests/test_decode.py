"""Images decoded right whatever users feed (issue 13): one test per kind of file, each on files the
test writes, each asserting decoded pixels; then the same files through training (cached and per
image), `mlic predict` and `mlic check-data`."""

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from mlic.cli import main
from mlic.config import DataConfig, load_config
from mlic.data.cache import build_cache, cache_path, open_cache
from mlic.data.decode import DecodeSettings, decode_image
from mlic.data.formats import parse_csv
from mlic.errors import ConfigError, DataError
from tests.helpers import REPO

DEFAULT = DecodeSettings.from_config()
ADOBE_RGB = Path("/usr/share/color/icc/compatibleWithAdobeRGB1998.icc")  # Debian's icc-profiles-free


def pixels(decoded) -> np.ndarray:
    assert decoded.image.mode == "RGB"
    return np.asarray(decoded.image).astype(int)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32767, 32768, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")  # Pillow writes (and reads) it as mode I;16
    decoded = decode_image(tmp_path / "g16.png", DEFAULT)
    expected = np.round(values.astype(float) * 255 / 65535).astype(int)
    assert decoded.conversions == ("16-bit",)
    np.testing.assert_array_equal(pixels(decoded), np.repeat(expected[..., None], 3, axis=2))
    assert expected.tolist() == [[0, 1, 4, 127, 128, 254, 255]]  # convert("RGB") gave 255 for all but 0


def _png_rgb16(path: Path, values: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow writes none), chunk by chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_rgb_png_comes_out_8bit_without_clipping(tmp_path):
    """Pillow itself reduces 16-bit RGB to 8 bit (the high byte): within 1 of v * 255 / 65535, never clipped."""
    values = np.array([[[0, 1000, 65535], [32767, 32768, 65280], [257 * 7, 257 * 200, 12345]]], dtype=np.uint16)
    _png_rgb16(tmp_path / "rgb16.png", values)
    got = pixels(decode_image(tmp_path / "rgb16.png", DEFAULT))
    assert np.abs(got - values.astype(float) * 255 / 65535).max() <= 1
    assert got[0, 0].tolist() == [0, 3, 255] and got[0, 2, :2].tolist() == [7, 200]


def _rgba(tmp_path) -> Path:
    img = Image.new("RGBA", (4, 1))
    img.putpixel((0, 0), (200, 10, 10, 0))  # fully transparent: its colour must not show
    img.putpixel((1, 0), (200, 10, 10, 255))
    img.putpixel((2, 0), (0, 0, 200, 128))
    img.putpixel((3, 0), (0, 0, 0, 0))  # transparent black: the old decode's black pixel
    img.save(tmp_path / "rgba.png")
    return tmp_path / "rgba.png"


@pytest.mark.parametrize("background, rgb", [("white", (255, 255, 255)), ("black", (0, 0, 0)), ("#808080", (128,) * 3)])
def test_transparency_is_composited_onto_the_background(tmp_path, background, rgb):
    decoded = decode_image(_rgba(tmp_path), DecodeSettings.from_config(DataConfig(background=background)))
    got = pixels(decoded)[0]
    assert decoded.conversions == ("alpha",)
    assert got[0].tolist() == list(rgb) and got[3].tolist() == list(rgb) and got[1].tolist() == [200, 10, 10]
    half = (np.array([0, 0, 200]) * 128 + np.array(rgb) * 127) / 255
    assert np.abs(got[2] - half).max() <= 1


def test_palette_and_gray_alpha_transparency_too(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 0, 0])
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)  # palette entry 0 is transparent
    la = Image.new("LA", (2, 1), (50, 0))
    la.putpixel((1, 0), (50, 255))
    la.save(tmp_path / "la.png")
    for name in ("p.png", "la.png"):
        assert decode_image(tmp_path / name, DEFAULT).conversions == ("alpha",)
    assert pixels(decode_image(tmp_path / "p.png", DEFAULT))[0].tolist() == [[255, 255, 255], [200, 0, 0]]
    assert pixels(decode_image(tmp_path / "la.png", DEFAULT))[0].tolist() == [[255, 255, 255], [50, 50, 50]]
    with pytest.raises(ConfigError, match="data.background"):
        DecodeSettings.from_config(DataConfig(background="not-a-colour"))


def _sideways_jpeg(path: Path) -> Path:
    """A phone photo held upright: stored 60 wide x 30 high, left half red, right half blue, orientation 6."""
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied(tmp_path):
    decoded = decode_image(_sideways_jpeg(tmp_path / "phone.jpg"), DEFAULT)
    assert decoded.conversions == ("exif-rotated",)
    assert decoded.image.size == (30, 60)  # was loaded sideways: 60x30
    got = pixels(decoded)
    assert np.abs(got[10, 15] - [255, 0, 0]).max() < 8  # the stored left half is now on top
    assert np.abs(got[50, 15] - [0, 0, 255]).max() < 8


def _adobe_rgb_profile() -> bytes:
    if not ADOBE_RGB.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{ADOBE_RGB} missing: .ci/run installs Debian's icc-profiles-free")
        pytest.skip(f"{ADOBE_RGB} missing (apt-get install icc-profiles-free)")
    return ADOBE_RGB.read_bytes()


def test_an_embedded_icc_profile_is_converted_to_srgb(tmp_path):
    colours = [(60, 180, 60), (200, 50, 50), (0, 255, 0), (128, 128, 128)]
    img = Image.new("RGB", (4, 1))
    for x, c in enumerate(colours):
        img.putpixel((x, 0), c)
    img.save(tmp_path / "adobe.png", icc_profile=_adobe_rgb_profile())
    decoded = decode_image(tmp_path / "adobe.png", DEFAULT)
    assert decoded.conversions == ("icc",)
    # Independently: littleCMS from the profile file itself to a fresh sRGB profile.
    transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(str(ADOBE_RGB)), ImageCms.createProfile("sRGB"),
                                        "RGB", "RGB")
    expected = np.asarray(ImageCms.applyTransform(img, transform)).astype(int)
    np.testing.assert_array_equal(pixels(decoded), expected)
    assert np.abs(pixels(decoded)[0, 0] - [60, 180, 60]).max() >= 30  # a mid green moves: (0, 181, 42) here
    assert np.abs(pixels(decoded)[0, 3] - 128).max() <= 2  # grey stays grey


def test_a_broken_or_srgb_profile_changes_nothing(tmp_path):
    img = Image.new("RGB", (2, 1), (60, 180, 60))
    img.save(tmp_path / "broken.png", icc_profile=b"not an ICC profile" * 10)
    img.save(tmp_path / "srgb.png", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    broken, srgb = decode_image(tmp_path / "broken.png", DEFAULT), decode_image(tmp_path / "srgb.png", DEFAULT)
    assert broken.conversions == ("icc-ignored",) and srgb.conversions == ()
    assert pixels(broken).tolist() == pixels(srgb).tolist() == [[[60, 180, 60]] * 2]


def _square(path: Path, side_x: int, side_y: int) -> Path:
    Image.new("RGB", (side_x, side_y), (9, 9, 9)).save(path)
    return path


def test_max_pixels_refuses_everything_above_it_with_no_band(tmp_path):
    """mlic checks `data.max_pixels` from the header: at the limit it decodes; 1.025x (inside the band
    where Pillow only warns) and 2.5x (where Pillow raises) are the same one-line DataError."""
    small = DecodeSettings.from_config(DataConfig(max_pixels=1000))
    assert pixels(decode_image(_square(tmp_path / "at.png", 40, 25), small))[0, 0].tolist() == [9, 9, 9]
    for name, size in (("band.png", (41, 25)), ("far.png", (50, 50))):
        with pytest.raises(DataError) as raised:
            decode_image(_square(tmp_path / name, *size), small)
        text = str(raised.value)
        assert text.startswith(f"{tmp_path / name}: cannot read image: {size[0]}x{size[1]}") and "\n" not in text
        assert "more than data.max_pixels=1,000" in text


def test_pillow_own_limit_neither_lets_through_nor_blocks(tmp_path, monkeypatch):
    """Pillow's process-wide limit lowered to 1000: its warning band (1000-2000 px, even made an error)
    and its error (above 2000) end in mlic's DataError; a user limit above Pillow's lets the image in."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    small = DecodeSettings.from_config(DataConfig(max_pixels=1000))
    band, far = _square(tmp_path / "band.png", 50, 30), _square(tmp_path / "far.png", 50, 50)
    for path in (band, far):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match="more than data.max_pixels=1,000"):
                decode_image(path, small)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DataError, match="50x30 = 1,500 pixels"):
        decode_image(band, small)  # Pillow still says its warning; mlic refuses the image from its header
    with pytest.raises(DataError) as raised:
        decode_image(far, small)  # Pillow's DecompressionBombError, not a traceback
    assert str(raised.value).startswith(f"{far}: cannot read image: 2,500 pixels, more than data.max_pixels=1,000 (")
    assert Image.MAX_IMAGE_PIXELS == 1000  # a smaller mlic limit changes nothing global
    large = DecodeSettings.from_config(DataConfig(max_pixels=5000))
    assert pixels(decode_image(far, large)).shape == (50, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 5000  # raised to the user's limit, never lowered


def test_animated_gif_and_multipage_tiff_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[1].save(tmp_path / "pages.tif", save_all=True, append_images=[frames[2], frames[0]])
    gif, tif = decode_image(tmp_path / "anim.gif", DEFAULT), decode_image(tmp_path / "pages.tif", DEFAULT)
    assert gif.conversions == tif.conversions == ("animated",)
    assert np.unique(pixels(gif).reshape(-1, 3), axis=0).tolist() == [[255, 0, 0]]
    assert np.unique(pixels(tif).reshape(-1, 3), axis=0).tolist() == [[0, 255, 0]]


def test_a_plain_rgb_jpeg_has_no_conversion(tmp_path):
    Image.new("RGB", (8, 8), (30, 60, 90)).save(tmp_path / "plain.jpg", quality=95)
    decoded = decode_image(tmp_path / "plain.jpg", DEFAULT)
    assert decoded.conversions == () and np.abs(pixels(decoded) - [30, 60, 90]).max() < 4


# --- the same files through training, the cache, predict and check-data -----------------------------

KINDS = ("16bit", "rgba", "palette", "exif", "icc", "gif", "tiff", "plain")


def _write(kind: str, path: Path, seed: int) -> Path:
    """One image of `kind` (24x24 once decoded), its colours varied by `seed`."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    if kind == "16bit":
        Image.fromarray(rng.integers(0, 65536, (24, 24)).astype(np.uint16)).save(path)
    elif kind == "rgba":
        alpha = np.where(np.arange(24)[:, None] < 12, 0, 255).astype(np.uint8).repeat(24, 1)
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path, transparency=0)
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb[:12]).resize((24, 12)).save(path, exif=exif)
    elif kind == "icc":
        Image.fromarray(rgb).save(path, icc_profile=ADOBE_RGB.read_bytes())
    elif kind in ("gif", "tiff"):
        frames = [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        Image.fromarray(rgb).save(path, quality=90)
    return path


SUFFIX = {"16bit": "png", "rgba": "png", "palette": "png", "exif": "jpg", "icc": "png", "gif": "gif", "tiff": "tif",
          "plain": "jpg"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A csv dataset of every kind, 3 images each (ICC left out where the profile is not installed and
    CI is not set), plus big.png: 80x80 = 6,400 pixels, a bomb once data.max_pixels=5000."""
    root = tmp_path_factory.mktemp("mixed")
    kinds = [k for k in KINDS if k != "icc" or ADOBE_RGB.is_file() or os.environ.get("CI")]
    rows = []
    for k, kind in enumerate(kinds):
        for j in range(3):
            name = f"{kind}{j}.{SUFFIX[kind]}"
            _write(kind, root / name, 10 * k + j)
            rows.append(f"{name},{'|'.join(n for n, on in (('a', (k + j) % 2), ('b', j != 1)) if on)}")
    Image.new("RGB", (80, 80), (5, 5, 5)).save(root / "big.png")
    rows.append("big.png,a|b")
    (root / "labels.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    return root


def _mixed_config(root: Path, tmp_path: Path, *overrides: str):
    return load_config(REPO / "configs" / "demo.yaml", [
        "data.format=csv", f"data.root={root}", "data.image_size=32", "data.cache_size=32", "data.max_pixels=5000",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4",
        "train.eval_batch_size=8", f"run.output_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("cache", ["on", "off"])
def test_training_reads_every_kind_and_skips_the_bomb(mixed, tmp_path, cache):
    from mlic.training.engine import fit

    fit(_mixed_config(mixed, tmp_path, "data.skip_bad=true", f"data.cache={cache}"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert next(x for x in lines if x["split"] == "train")["skipped_images"] == 1
    assert next(x for x in lines if x["split"] == "val")["images"] == 5  # 24 - 1 skipped, val 20 %
    caches = list((tmp_path / "cache").glob("*.u8"))
    assert len(caches) == (cache == "on")
    if caches:  # the cache holds what decode_image gives: the rgba images' transparent top half is white
        dataset = parse_csv(mixed, settings=DecodeSettings.from_config(DataConfig(max_pixels=5000)))[0]
        array = open_cache(caches[0])
        for row in (dataset.names.index("rgba0.png"), dataset.names.index("16bit1.png")):
            resized = dataset.read(row).resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=None)
            np.testing.assert_array_equal(array[row], np.asarray(resized).transpose(2, 0, 1))
        assert (array[dataset.names.index("rgba0.png"), :, :12] == 255).all()


def test_without_skip_bad_the_bomb_is_one_error_naming_it(mixed, tmp_path):
    from mlic.training.engine import fit

    with pytest.raises(DataError) as raised:
        fit(_mixed_config(mixed, tmp_path, "data.cache=on"))  # the cache build decodes every image first
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"{mixed / 'big.png'}: cannot read image: 80x80 = 6,400 pixels, more than data.max_pixels")


def test_decode_settings_key_the_cache(mixed, tmp_path):
    white, black = (parse_csv(mixed, settings=DecodeSettings.from_config(DataConfig(background=b)))[0]
                    for b in ("white", "black"))
    assert cache_path(white, 24, tmp_path) != cache_path(black, 24, tmp_path)
    smaller = parse_csv(mixed, settings=DecodeSettings.from_config(DataConfig(max_pixels=5000)))[0]
    assert cache_path(smaller, 24, tmp_path) != cache_path(white, 24, tmp_path)
    a, b = open_cache(build_cache(white, 24, tmp_path)), open_cache(build_cache(black, 24, tmp_path))
    alpha = [i for i, n in enumerate(white.names) if n.startswith(("rgba", "palette"))]
    others = np.setdiff1d(np.arange(len(white)), alpha)
    np.testing.assert_array_equal(a[others], b[others])
    assert (a[alpha, :, :12] == 255).any() and not (b[alpha, :, :12] == 255).all()
    assert (b[[white.names.index("rgba0.png")], :, :12] == 0).all()


def test_predict_decodes_as_training_does(mixed, tmp_path):
    """Predict on the mixed images and on the same images already converted (by decode_image, saved as
    plain RGB PNGs, with the run's background): the probabilities are the same, so predict converted them
    as training did, with the run's settings."""
    from mlic.training.engine import fit

    fit(_mixed_config(mixed, tmp_path, "data.skip_bad=true", "data.background=black"))
    originals, flat = tmp_path / "originals", tmp_path / "flat"
    originals.mkdir()
    flat.mkdir()
    settings = DecodeSettings.from_config(DataConfig(max_pixels=5000, background="black"))
    for path in sorted(mixed.iterdir()):
        if path.suffix != ".csv" and path.name != "big.png":
            (originals / path.name).write_bytes(path.read_bytes())
            decode_image(path, settings).image.save(flat / f"{path.name}.png")
    probs = []
    for folder in (originals, flat):
        out = tmp_path / f"{folder.name}.csv"
        assert main(["predict", str(tmp_path / "run" / "model"), str(folder), "--probs", str(out)]) == 0
        probs.append([line.split(",", 1)[1] for line in out.read_text().splitlines()[1:]])
    assert len(probs[0]) == len(list(originals.iterdir())) and probs[0] == probs[1]


def test_check_data_warns_with_counts_and_strict_fails(mixed, capsys):
    assert main(["check-data", "--format", "csv", str(mixed)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    warned = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    icc = ADOBE_RGB.is_file() or bool(os.environ.get("CI"))
    expected = ["warning: 3 image(s) had 16-bit pixels, scaled to 8 bit (v * 255 / 65535): 16bit0.png, 16bit1.png, "
                "16bit2.png",
                "warning: 6 image(s) had transparency, composited onto data.background: rgba0.png, rgba1.png, "
                "rgba2.png and 3 more",
                "warning: 3 image(s) were turned upright by their EXIF orientation: exif0.jpg, exif1.jpg, exif2.jpg",
                *(["warning: 3 image(s) were converted from their embedded ICC profile to sRGB: icc0.png, icc1.png, "
                   "icc2.png"] if icc else []),
                "warning: 6 image(s) are animated or multi-page: the first frame is used: gif0.gif, gif1.gif, "
                "gif2.gif and 3 more"]
    assert warned == expected
    assert main(["check-data", "--format", "csv", "--strict", str(mixed)]) == 1
    capsys.readouterr()
    assert main(["check-data", "--format", "csv", "--max-pixels", "5000", str(mixed)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{mixed / 'big.png'}: cannot read image: 80x80 = 6,400 pixels")
