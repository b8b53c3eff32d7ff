import datetime
import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ferlab.models import create_model, list_models, register_model
from ferlab.models.vgg import cfgs


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name)
    out = model(torch.rand(2, 1, 48, 48))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_registry_rejects_unknown_and_duplicates():
    with pytest.raises(ValueError, match="unknown model 'nope'; available: resnet, vgg19"):
        create_model("nope")
    with pytest.raises(ValueError, match=r"'vggnet_s': .*unexpected keyword argument 'hiden'"):
        create_model("vggnet_s", hiden=256)  # model_kwargs with a typo: one line, not a trace
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def vgg19():  # pragma: no cover - never built
            raise AssertionError


def _torchvision_state(seed: int = 0, **bad_shapes) -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision's vgg19 (features + classifier)."""
    g = torch.Generator().manual_seed(seed)
    state, cin, i = {}, 3, 0
    for v in cfgs["vgg19"]:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(int(v), cin, 3, 3, generator=g)
        state[f"features.{i}.bias"] = torch.randn(int(v), generator=g)
        cin, i = int(v), i + 2
    state["classifier.0.weight"] = torch.randn(4096, 25088 // 64)  # ignored by the loader
    state.update(bad_shapes)
    return state


def test_imagenet_loader_maps_torchvision_keys(tmp_path):
    state = _torchvision_state()
    pth, st = tmp_path / "vgg19.pth", tmp_path / "vgg19.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pth, st):
        model = create_model("vgg19", pretrained=str(path))
        own = model.state_dict()
        assert len([k for k in own if k.startswith("features.")]) == 32
        for k in own:
            if k.startswith("features."):
                assert torch.equal(own[k], state[k]), k


def test_imagenet_loader_rejects_mismatches(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save(_torchvision_state(**{"features.0.weight": torch.zeros(64, 1, 3, 3)}), bad)
    with pytest.raises(
        ValueError,
        match=r"features\.0\.weight has shape \(64, 1, 3, 3\), "
        r"expected \(64, 3, 3, 3\)",
    ):
        create_model("vgg19", pretrained=str(bad))
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(ValueError, match="not torchvision VGG19 weights; missing"):
        create_model("vgg19", pretrained=str(partial))
    with pytest.raises(FileNotFoundError):
        create_model("vgg19", pretrained=str(tmp_path / "absent.pth"))
    # a pickle of something other than tensors: one line naming the file, never run
    torch.save({"when": datetime.date(2026, 1, 1)}, tmp_path / "obj.pth")
    with pytest.raises(ValueError) as e:
        create_model("vgg19", pretrained=str(tmp_path / "obj.pth"))
    assert str(e.value).startswith(f"{tmp_path / 'obj.pth'}: not a PyTorch state dict (")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_frozen_blocks_stay_frozen(n):
    torch.manual_seed(0)
    model = create_model("vgg19", frozen_blocks=n)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    frozen = {1: 2, 3: 8, 5: 16}[n]  # conv layers in the first n blocks: 2, 2, 4, 4, 4
    assert [c.weight.requires_grad for c in convs] == [False] * frozen + [True] * (16 - frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.rand(2, 1, 48, 48)).sum().backward()
    opt.step()
    after = model.state_dict()
    for i, c in enumerate(convs):
        key = next(k for k, v in model.named_parameters() if v is c.weight)
        assert torch.equal(before[key], after[key]) == (i < frozen), key
    with pytest.raises(ValueError, match=r"frozen_blocks must be in 0\.\.5"):
        create_model("vgg19", frozen_blocks=6)


def test_imagenet_weights_download_and_cache(tmp_path, monkeypatch):
    """The "imagenet" source for real: an HTTP server on this machine plays download.pytorch.org."""
    import functools
    import http.server
    import threading

    from ferlab.models import vgg

    served = tmp_path / "served"
    served.mkdir()
    state = _torchvision_state()
    torch.save(state, served / "weights.pth")
    # named as torch.hub expects: the file's SHA-256 prefix, checked on download
    digest = hashlib.sha256((served / "weights.pth").read_bytes()).hexdigest()[:8]
    name = f"vgg19-{digest}.pth"
    (served / "weights.pth").rename(served / name)
    (served / "vgg19-00000000.pth").write_bytes((served / name).read_bytes())  # a wrong file
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # a download whose bytes do not match its name's hash is refused, and not cached
        monkeypatch.setattr(vgg, "IMAGENET_URL", f"{base}/vgg19-00000000.pth")
        with pytest.raises(ValueError, match="the download is not the expected file"):
            create_model("vgg19", pretrained="imagenet")
        monkeypatch.setattr(vgg, "IMAGENET_URL", f"{base}/{name}")
        model = create_model("vgg19", pretrained="imagenet")
    finally:
        server.shutdown()
        server.server_close()  # closed, not just idle: a later request must fail, not hang
    assert torch.equal(model.state_dict()["features.0.weight"], state["features.0.weight"])
    cached = sorted(p.name for p in (tmp_path / "hub" / "hub" / "checkpoints").iterdir())
    assert cached == [name]
    create_model("vgg19", pretrained="imagenet")  # server gone: the cached copy is used

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(OSError, match="ImageNet weights could not be downloaded from http"):
        create_model("vgg19", pretrained="imagenet")


def test_stride_two_stem_ends_on_the_same_3x3_grid():
    # vggnet_s24 runs vggnet_s's stages at half the resolution; dropping its last pool keeps
    # GAP reading the whole 3x3 map (a 2x2 pool of 3x3 would silently drop a row and a column)
    x = torch.rand(1, 1, 48, 48)
    for name in ("vggnet_s", "vggnet_s24"):
        assert create_model(name).features(x).shape == (1, 256, 3, 3), name
    first = create_model("vggnet_s24").features[0]
    assert first.stride == (2, 2)


def test_vggnet_depth_per_stage():
    convs = [
        [m for m in stage if isinstance(m, torch.nn.Conv2d)]
        for stage in _stages(create_model("vggnet_s24d").features)
    ]
    assert [len(c) for c in convs] == [2, 2, 3, 3]
    assert create_model("vggnet_s24d").features(torch.rand(1, 1, 48, 48)).shape == (1, 256, 3, 3)
    wanted = r"expected a whole number >= 1, or one per stage \(4\)"
    for bad in [(2, 2, 2), 0, (2, 0, 2, 2), 2.5, "3"]:
        with pytest.raises(ValueError, match=wanted):
            create_model("vggnet_s", depth=bad)
    # ResNet's blocks per stage are checked alike (once: "zip() argument 2 is shorter")
    with pytest.raises(ValueError, match=r"blocks \(2, 2\): expected a whole number >= 1"):
        create_model("resnet", blocks=(2, 2))
    # numpy integers count as whole numbers, as they did before the check
    assert create_model("vggnet_s", depth=tuple(np.array([2, 2, 3, 3]))) is not None


def _stages(features: torch.nn.Sequential) -> list[list[torch.nn.Module]]:
    """Layers split after each max-pool (the last stage of a stride-2 stem has none)."""
    stages: list[list[torch.nn.Module]] = [[]]
    for m in features:
        stages[-1].append(m)
        if isinstance(m, torch.nn.MaxPool2d):
            stages.append([])
    return [s for s in stages if s]
