import pytest
import torch

from ferlab.losses import FocalLoss, create_loss
from ferlab.transforms import Augment, check_preprocess, fit_input, preprocess_spec, to_input


def _batch():
    return torch.rand(6, 1, 48, 48, generator=torch.Generator().manual_seed(0))


def test_identity_and_flip():
    x = _batch()
    none = Augment(hflip=0, rotate=0, shift=0, shear=0, zoom=0)
    torch.testing.assert_close(none(x, torch.Generator()), x, atol=1e-5, rtol=0)
    flip = Augment(hflip=1, rotate=0, shift=0, shear=0, zoom=0)
    torch.testing.assert_close(flip(x, torch.Generator()), x.flip(-1), atol=1e-5, rtol=0)


def test_augment_is_seeded_per_sample_and_batched():
    x = _batch()
    aug = Augment(erase=0.5)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # each sample gets its own transform: identical inputs give different outputs
    same = x[:1].expand(6, -1, -1, -1).contiguous()
    out = aug(same, torch.Generator().manual_seed(3))
    assert not torch.allclose(out[0], out[1])


def test_crop_keeps_the_pixel_scale_and_stays_inside():
    # channel 0 rises by 1 per pixel in x, channel 1 in y: a crop of them rises by the same
    # steps and starts somewhere in [0, 48 - 44] pixels, each sample at its own place
    ramp = torch.arange(48.0)
    x = torch.stack([ramp.expand(48, 48), ramp.view(48, 1).expand(48, 48)]).expand(16, 2, 48, 48)
    aug = Augment(hflip=0, rotate=0, shift=0, shear=0, zoom=0, crop=44)
    out = aug(x.contiguous(), torch.Generator().manual_seed(0))
    assert out.shape == (16, 2, 44, 44)
    ones = torch.ones(16, 43, 44)
    torch.testing.assert_close(out[:, 0].diff(dim=-1), ones.transpose(1, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 1].diff(dim=-2), ones, atol=1e-4, rtol=0)
    start = out[:, :, 0, 0]  # (left, top) of each crop
    assert ((start >= 0) & (start <= 4)).all() and (start.std(0) > 0.5).all()


def test_fit_input_takes_the_centre_crop_of_a_crop_trained_model():
    x = _batch()
    assert fit_input(x, preprocess_spec("minmax")) is x
    assert "crop" not in preprocess_spec("minmax")  # older models' specs stay as they were
    spec = check_preprocess(preprocess_spec("minmax", crop=40))
    torch.testing.assert_close(fit_input(x, spec), x[..., 4:44, 4:44], atol=0, rtol=0)
    for bad in (60, -1, "44", True, 4.5):
        with pytest.raises(ValueError, match=r"^m.json: preprocess crop: expected a side in"):
            check_preprocess({**spec, "crop": bad}, "m.json")


def test_erasing_fills_a_rectangle():
    x = torch.zeros(8, 1, 48, 48)
    out = Augment(hflip=0, rotate=0, shift=0, shear=0, zoom=0, erase=1.0)(
        x, torch.Generator().manual_seed(0)
    )
    changed = (out != 0).flatten(1).sum(1).float() / (48 * 48)
    assert ((changed > 0.01) & (changed < 0.25)).all()


def test_normalisations():
    faces = torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 48, 24)
    assert to_input(faces, preprocess_spec("minmax")).max() == 1
    assert to_input(faces, preprocess_spec("none")).max() == 255
    spec = preprocess_spec("standardize", faces)
    assert abs(float(to_input(faces, spec).mean())) < 1e-5


def test_focal_loss():
    logits = torch.randn(16, 7, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 7, (16,), generator=torch.Generator().manual_seed(1))
    ce = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(FocalLoss(gamma=0)(logits, y), ce)
    assert FocalLoss(gamma=2)(logits, y) < ce
    alpha = [0.5, 3.0, 1.0, 0.25, 1.0, 2.0, 1.5]  # per class: each face weighs its own
    per_face = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    want = (torch.tensor(alpha)[y] * per_face).mean()
    torch.testing.assert_close(create_loss("focal", 0, alpha)(logits, y), want)
    # gamma < 1 and a face the model is sure of (p_t rounds to 1): d(0 ** gamma) was
    # infinite, and one such face turned every weight into NaN
    sure = torch.tensor([[40.0, 0, 0, 0, 0, 0, 0], [0.0, 1, 0, 0, 0, 0, 0]], requires_grad=True)
    FocalLoss(gamma=0.5)(sure, torch.tensor([0, 1])).backward()
    assert sure.grad is not None and torch.isfinite(sure.grad).all()
