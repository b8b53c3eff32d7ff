import pytest
import torch

from ferlab.mix import Mix, blend


def _faces(n=8):
    # face i is the constant image i: every pixel says which face it came from
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 48, 48).clone()


def test_mixup_blends_each_face_with_its_partner():
    x = _faces()
    out, perm, lam = Mix(mixup=0.4)(x, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(8))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    again = Mix(mixup=0.4)(x, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and again[2] == lam
    assert Mix(mixup=0.4)(x, torch.Generator().manual_seed(1))[2] != lam


def test_cutmix_pastes_one_box_whose_area_is_one_minus_lambda():
    x = _faces()
    for seed in range(20):
        out, perm, lam = Mix(cutmix=1.0)(x, torch.Generator().manual_seed(seed))
        for i in range(8):
            own = out[i] == i
            partner = out[i] == perm[i]
            assert bool((own | partner).all())  # every pixel is its own or its partner's
            if perm[i] != i:
                rows, cols = (~own[0]).nonzero(as_tuple=True)
                pasted = int((~own).sum())
                assert pasted == round((1 - lam) * 48 * 48)  # lambda is the box as clipped
                if pasted:  # and the pasted pixels form one rectangle
                    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                    assert int(box) == pasted


def test_both_on_alternate_and_prob_zero_leaves_the_batch_alone():
    x = _faces()
    kinds = set()
    for seed in range(30):
        out = Mix(mixup=0.4, cutmix=1.0)(x, torch.Generator().manual_seed(seed))[0]
        values = set(out.unique().tolist())
        kinds.add("cutmix" if values <= set(range(8)) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    out, _, lam = Mix(mixup=0.4, prob=0.0)(x, torch.Generator().manual_seed(0))
    assert lam == 1.0 and torch.equal(out, x)
    assert not Mix(prob=1.0).active and not Mix(mixup=1.0, prob=0.0).active


def test_targets_mix_like_their_faces():
    target = torch.eye(4)
    perm = torch.tensor([1, 0, 3, 2])
    mixed = blend(target, perm, 0.75)
    assert torch.allclose(mixed.sum(1), torch.ones(4))
    assert mixed[0].tolist() == [0.75, 0.25, 0.0, 0.0]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mixup": -0.1}, "Beta alphas >= 0"),
        ({"cutmix": -1.0}, "Beta alphas >= 0"),
        ({"mixup": 0.2, "prob": 1.5}, r"mix_prob is a probability in \[0, 1\], got 1.5"),
    ],
)
def test_bad_values_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Mix(**kw)
