import gzip
import os
import time

import numpy as np
import pytest

from conftest import save_image, synthetic_rows, write_csv
from ferlab.data import (
    EMOTIONS,
    DataError,
    load_dataset,
    load_fer2013_csv,
    split_dataset,
    stratified_subset,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


def test_emotions_order():
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_csv_splits_labels_and_pixels(tiny_csv):
    rows = synthetic_rows()
    data = load_dataset(tiny_csv)
    assert data.images.shape == (42, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [r[0] for r in rows]
    np.testing.assert_array_equal(data.images[5], rows[5][1])
    splits = split_dataset(data, "official")
    for key, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        assert len(splits[key]) == 14
        assert set(splits[key].usage) == {usage}
        assert splits[key].counts().tolist() == [2] * 7


def test_gz_matches_plain_and_is_cached(tmp_path, tiny_csv):
    gz = tmp_path / "tiny.csv.gz"
    gz.write_bytes(gzip.compress(tiny_csv.read_bytes()))
    a, b = load_dataset(tiny_csv), load_fer2013_csv(gz)
    np.testing.assert_array_equal(a.images, b.images)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    # the cache answers the second load; a changed file (new mtime/size) is parsed again
    write_csv(tiny_csv, synthetic_rows()[:7])
    os.utime(tiny_csv, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(load_dataset(tiny_csv)) == 7


@pytest.mark.slow
def test_real_csv_counts_and_second_load_from_the_cache(monkeypatch):
    from conftest import REAL_CSV
    from ferlab import data as data_module

    if not REAL_CSV.is_file():
        pytest.skip("FER-2013 not present")
    data = load_fer2013_csv(REAL_CSV)

    def no_parse(path):
        raise AssertionError(f"{path} parsed again: the cache did not answer")

    monkeypatch.setattr(data_module, "_parse_csv", no_parse)
    again = load_fer2013_csv(REAL_CSV)
    assert len(again) == 35887
    np.testing.assert_array_equal(again.images, data.images)
    counts = {u: int((data.usage == u).sum()) for u in ("Training", "PublicTest", "PrivateTest")}
    assert counts == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert data.subset(data.usage == "PrivateTest").counts().tolist() == [
        491,
        55,
        528,
        879,
        594,
        416,
        626,
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ('9,"{px}",Training', "line 2: 'emotion' is '9', expected 0..6"),
        ('x,"{px}",Training', "line 2: 'emotion' is 'x'"),
        ('1,"1 2 3",Training', "line 2: 'pixels' has 3 values, expected 2304"),
        ('1,"{bad}",Training', "line 2: 'pixels' has values outside 0..255"),
        ('1,"{nan}",Training', "line 2: 'pixels' must be 2304 integers"),
        ('1,"{huge}",Training', "line 2: 'pixels' must be 2304 integers"),  # past int64
        ('1,"{px}",Validation', "line 2: 'Usage' is 'Validation', expected one of Training"),
        # a row without a Usage among rows with one would belong to no official split
        ('1,"{px}",Training\n1,"{px}",', "line 3: 'Usage' is empty, expected one of Training"),
        # blank lines are not rows: the message names the file's line
        ('1,"{px}",Training\n\n\n9,"{px}",Training', "line 5: 'emotion' is '9'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    px = " ".join(["7"] * 2304)
    bad = " ".join(["7"] * 2303 + ["256"])
    nan = " ".join(["7"] * 2303 + ["x"])
    huge = " ".join(["7"] * 2303 + ["9" * 20])
    path = tmp_path / "bad.csv"
    text = line.format(px=px, bad=bad, nan=nan, huge=huge)
    path.write_text("emotion,pixels,Usage\n" + text + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_column(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("label,pixels\n1,2\n")
    with pytest.raises(DataError, match=r"missing column.*emotion"):
        load_dataset(path)
    # Excel's UTF-8 byte-order mark is not part of the first column's name
    path.write_text('\ufeffemotion,pixels,Usage\n3,"' + " ".join(["7"] * 2304) + '",Training\n')
    assert load_dataset(path).labels.tolist() == [3]


def test_per_image_release_usage_from_prefix(tmp_path):
    img = np.full((48, 48), 100, np.uint8)
    save_image(tmp_path / "train" / "happy" / "Training_1.jpg", img)
    save_image(tmp_path / "train" / "sad" / "Training_2.jpg", img)
    save_image(tmp_path / "test" / "happy" / "PublicTest_3.jpg", img)
    save_image(tmp_path / "test" / "sad" / "PrivateTest_4.jpg", img)
    save_image(tmp_path / "test" / "sad" / "other.png", img)
    data = load_dataset(tmp_path)
    assert sorted(zip(data.labels.tolist(), data.usage.tolist(), strict=True)) == [
        (3, "PublicTest"),
        (3, "Training"),
        (4, "PrivateTest"),
        (4, "PublicTest"),
        (4, "Training"),
    ]
    assert abs(int(data.images[0].mean()) - 100) <= 2
    # train/, val/, test/ (datasets other than FER-2013): val/ was silently left out
    save_image(tmp_path / "val" / "angry" / "v.png", img)
    data = load_dataset(tmp_path)
    assert sorted(zip(data.labels.tolist(), data.usage.tolist(), strict=True)) == [
        (0, "PublicTest"),
        (3, "PublicTest"),  # named PublicTest_3: the prefix wins
        (3, "Training"),
        (4, "PrivateTest"),
        (4, "PrivateTest"),  # other.png: held out
        (4, "Training"),
    ]


def test_user_folder_synonyms_any_size_and_colour(tmp_path):
    rgb = np.zeros((120, 90, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: grayscale 76 by ITU-R 601
    save_image(tmp_path / "Happiness" / "a.png", rgb)
    save_image(tmp_path / "ANGER" / "b.bmp", np.full((30, 30), 10, np.uint8))
    save_image(tmp_path / "surprised" / "c.jpeg", np.full((64, 64), 200, np.uint8))
    (tmp_path / "surprised" / "notes.txt").write_text("ignored: not an image suffix")
    # every photo format ferlab decodes, not only jpg/png/bmp (a folder of .pgm was skipped)
    save_image(tmp_path / "sad" / "d.pgm", np.full((48, 48), 50, np.uint8))
    save_image(tmp_path / "fear" / "e.webp", np.full((48, 48), 60, np.uint8))
    save_image(tmp_path / "neutral" / "f.tif", np.full((48, 48), 70, np.uint8))
    data = load_dataset(tmp_path)
    assert data.images.shape == (6, 48, 48)
    assert sorted(data.labels.tolist()) == [0, 2, 3, 4, 5, 6]
    red = data.images[data.labels.tolist().index(3)]
    assert abs(int(red.mean()) - 76) <= 1
    with pytest.raises(DataError, match="split 'official' needs"):
        split_dataset(data, "official")


def test_unknown_folder_error_or_skip(tmp_path):
    save_image(tmp_path / "happy" / "a.png", np.zeros((48, 48), np.uint8))
    save_image(tmp_path / "contempt" / "b.png", np.zeros((48, 48), np.uint8))
    with pytest.raises(DataError, match=r"unknown class folder\(s\) \['contempt'\]"):
        load_dataset(tmp_path)
    assert len(load_dataset(tmp_path, ignore_unknown=True)) == 1


def test_unreadable_image_and_empty_folder(tmp_path):
    (tmp_path / "sad").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path)
    (tmp_path / "sad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        load_dataset(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_stratified_split_is_reproducible_and_stratified(tmp_path):
    data = load_dataset(write_csv(tmp_path / "s.csv", synthetic_rows(per_class=10)))
    a, b = split_dataset(data, "stratified", seed=1), split_dataset(data, "stratified", seed=1)
    c = split_dataset(data, "stratified", seed=2)
    assert [len(a[k]) for k in ("train", "val", "test")] == [168, 21, 21]
    np.testing.assert_array_equal(a["val"].images, b["val"].images)
    assert not np.array_equal(a["val"].images, c["val"].images)
    assert a["train"].counts().tolist() == [24] * 7
    assert a["val"].counts().tolist() == [3] * 7
    with pytest.raises(ValueError, match="unknown split"):
        split_dataset(data, "random")


def test_a_stratified_split_of_few_faces_says_what_it_did(tmp_path, caplog):
    data = load_dataset(write_csv(tmp_path / "s.csv", synthetic_rows(per_class=10)))
    keep = [np.flatnonzero(data.labels != 1), np.flatnonzero(data.labels == 1)[:3]]
    few = data.subset(np.sort(np.concatenate(keep)))
    with caplog.at_level("WARNING", logger="ferlab.data"):
        parts = split_dataset(few, "stratified")
    assert "not stratified (fewer than 10 faces: disgust 3)" in caplog.text
    assert sum(len(p) for p in parts.values()) == len(few)
    with pytest.raises(DataError, match=r"s\.csv: 9 faces; a stratified split needs 10"):
        split_dataset(data.subset(np.arange(9)), "stratified")  # a raw sklearn error before


def test_stratified_subset(tmp_path):
    data = load_dataset(write_csv(tmp_path / "s.csv", synthetic_rows(per_class=10)))
    sub = stratified_subset(data, 0.5, seed=0)
    assert sub.counts().tolist() == [15] * 7
    np.testing.assert_array_equal(sub.images, stratified_subset(data, 0.5, seed=0).images)


def test_image_folder_is_cached_and_invalidated(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    path = save_image(root / "happy" / "a.png", np.full((48, 48), 10, np.uint8))
    save_image(root / "sad" / "b.png", np.full((48, 48), 20, np.uint8))
    first = load_dataset(root)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("a cached folder must not be decoded again")

    with monkeypatch.context() as m:
        m.setattr("ferlab.data.read_image", no_decoding)
        np.testing.assert_array_equal(load_dataset(root).images, first.images)
    save_image(path, np.full((48, 48), 99, np.uint8))  # new pixels, new size/mtime
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert sorted(int(im.mean()) for im in load_dataset(root).images) == [20, 99]
    # relabelled by moving a symlink: same target, size and mtime, so the old label came back
    links = tmp_path / "links"
    (links / "happy").mkdir(parents=True)
    (links / "sad").mkdir()
    (links / "happy" / "a.png").symlink_to(path)
    (links / "sad" / "b.png").symlink_to(root / "sad" / "b.png")
    assert load_dataset(links).labels.tolist() == [3, 4]
    (links / "happy" / "a.png").rename(links / "sad" / "a.png")
    assert load_dataset(links).labels.tolist() == [4, 4]


def test_hidden_files_in_class_folders_are_not_faces(tmp_path):
    root = tmp_path / "faces"
    save_image(root / "happy" / "a.png", np.full((48, 48), 10, np.uint8))
    (root / "happy" / "._a.png").write_bytes(b"\0\5\26\7 AppleDouble")  # stopped the load
    save_image(
        root / "happy" / ".ipynb_checkpoints" / "a-checkpoint.png", np.zeros((48, 48), np.uint8)
    )
    assert load_dataset(root).labels.tolist() == [3]


def test_folder_images_are_upright_and_16_bit_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from ferlab.data import read_image

    ramp = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    got = read_image(tmp_path / "ramp16.png")
    np.testing.assert_array_equal(got[0], np.round(ramp[0] / 257).astype(np.uint8))
    # a camera's portrait photo: pixels stored sideways, EXIF orientation 6 says turn them
    half = np.zeros((48, 48), np.uint8)
    half[:, 24:] = 255  # stored: left black, right white; upright: top black, bottom white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(half).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    got = read_image(tmp_path / "sideways.jpg").astype(int)
    assert got[:20].mean() < 20 and got[28:].mean() > 235
    # Pillow turns a TIFF upright itself as it loads it: it was turned a second time
    Image.fromarray(half).save(tmp_path / "sideways.tif", exif=exif)
    got = read_image(tmp_path / "sideways.tif").astype(int)
    assert got[:20].mean() < 20 and got[28:].mean() > 235
    # float images hold 0..1: they came out black
    Image.fromarray(ramp[:, :48].astype(np.float32) / 65535).save(tmp_path / "ramp01.tif")
    got = read_image(tmp_path / "ramp01.tif")
    np.testing.assert_allclose(got[0], np.round(ramp[0] / 257), atol=1)


def test_a_badly_typed_exif_tag_does_not_stop_the_photo_being_turned_upright(tmp_path):
    # Pillow's exif_transpose rewrites the EXIF and raised struct.error on a text value in a
    # number tag (Pillow #8965): predict crashed and the server answered 500
    import struct

    from PIL import Image

    from ferlab.data import read_image
    from ferlab.media import read_rgb
    from ferlab.serve.inputs import decode_image

    def exif(*entries: bytes) -> bytes:  # big-endian TIFF header and one IFD
        return b"Exif\0\0MM\0*" + struct.pack(">IH", 8, len(entries)) + b"".join(entries) + bytes(4)

    turn = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)  # orientation 6, a SHORT: as it should be
    text = struct.pack(">HHI4s", 0x0119, 2, 4, b"Cam\0")  # MaxSampleValue as ASCII: bad
    stored = np.zeros((24, 40), np.uint8)
    stored[:, 20:] = 255  # stored: left black, right white; upright: top black, bottom white
    for name, tags in (("good.jpg", [turn]), ("bad.jpg", [turn, text])):
        Image.fromarray(stored).save(tmp_path / name, exif=exif(*tags), quality=95)
        rgb = read_rgb(tmp_path / name).astype(int)
        assert rgb.shape == (40, 24, 3), name  # portrait: turned
        assert rgb[:16].mean() < 20 and rgb[24:].mean() > 235, name
        served = decode_image((tmp_path / name).read_bytes(), 10**6, 10**6)
        np.testing.assert_array_equal(served, rgb.astype(np.uint8))
        assert read_image(tmp_path / name).shape == (48, 48)


def test_every_decoder_refuses_postscript_whatever_the_file_is_called(tmp_path, monkeypatch):
    # Pillow identifies files by content and hands EPS to Ghostscript: an untrusted folder's
    # "photo.jpg" must never reach that plugin, in datasets, predict or the server
    from PIL import EpsImagePlugin

    from ferlab.data import DataError, read_image
    from ferlab.media import read_rgb
    from ferlab.serve.inputs import ApiError, decode_image

    def opened(*args):
        raise AssertionError("the EPS plugin was asked to open the file")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", opened)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 48 48\nshowpage\n"
    (tmp_path / "photo.jpg").write_bytes(eps)
    with pytest.raises(DataError, match=r"photo\.jpg: not a readable image \(cannot identify"):
        read_image(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match=r"photo\.jpg: not a readable image \(cannot identify"):
        read_rgb(tmp_path / "photo.jpg")
    with pytest.raises(ApiError, match="not a supported image"):
        decode_image(eps, 10**6, 10**6)
    # the portable graymaps some face datasets ship still read
    save = tmp_path / "face.pgm"
    from PIL import Image

    Image.fromarray(np.full((48, 48), 77, np.uint8)).save(save)
    assert (read_image(save) == 77).all()


def test_a_damaged_cache_is_parsed_again_and_replaced(tiny_csv, tmp_path, caplog):
    first = load_fer2013_csv(tiny_csv)
    (cache,) = (tmp_path / "cache").glob("*.npz")
    for damage in (b"", b"PK\x03\x04 not a zip", cache.read_bytes()[:100]):
        cache.write_bytes(damage)
        again = load_fer2013_csv(tiny_csv)
        np.testing.assert_array_equal(again.images, first.images)
        assert "ignoring unreadable cache" in caplog.text
        caplog.clear()
    np.testing.assert_array_equal(load_fer2013_csv(tiny_csv).images, first.images)
    assert "ignoring" not in caplog.text  # the cache was written again, whole
