"""Kinetics-400 r3d_18 weights: the torch state_dict converter, checked against a torch forward pass.

The torch side is built from plain `torch.nn` following torchvision's published
`torchvision.models.video.resnet.r3d_18` (torchvision itself does not import with the CPU torch
build here). Tests needing torch skip where it is absent.
"""

import numpy as np
import pytest

import tlunet
from tlunet.models.resnet3d import (build_r3d18_encoder, load_r3d18_state_dict, read_state_dict,
                                    save_state_dict_npz)


def _torch_r3d18():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):  # torchvision.models.video.resnet.BasicBlock with Conv3DSimple
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv3d(inplanes, planes, 3, stride, 1, bias=False),
                                       nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
            self.conv2 = nn.Sequential(nn.Conv3d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm3d(planes))
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            residual = x if self.downsample is None else self.downsample(x)
            return self.relu(self.conv2(self.conv1(x)) + residual)

    class R3D18(nn.Module):  # torchvision.models.video.resnet.VideoResNet(BasicBlock, [2]*4, BasicStem)
        def __init__(self, num_classes=400):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                      nn.BatchNorm3d(64), nn.ReLU(inplace=True))
            inplanes, stages = 64, []
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride, bias=False),
                                         nn.BatchNorm3d(planes))
                stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride, down),
                                            BasicBlock(planes, planes)))
                inplanes = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
            self.fc = nn.Linear(512, num_classes)

        def features(self, x):
            outs = [self.stem(x)]
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                outs.append(layer(outs[-1]))
            return outs

    torch.manual_seed(0)
    net = R3D18()
    with torch.no_grad():  # non-trivial BN statistics, so a swapped mean/var would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return torch, net.eval()


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


def test_torchvision_r3d18_counts():
    _, net = _torch_r3d18()
    total = sum(p.numel() for p in net.parameters())
    assert total == 33_371_472  # torchvision's documented r3d_18 size, from the reference itself
    encoder = build_r3d18_encoder((8, 32, 32, 3))
    assert sum(int(np.prod(w.shape)) for w in encoder.trainable_weights) == total - 512 * 400 - 400


@pytest.mark.parametrize("channels", [3, 1])
def test_converted_encoder_matches_torch_forward(channels):
    torch, net = _torch_r3d18()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    encoder = build_r3d18_encoder((8, 32, 48, channels))
    unused = load_r3d18_state_dict(encoder, state)
    assert unused == ["fc.bias", "fc.weight"]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 32, 48, channels)).astype("float32")
    x_torch = np.repeat(x, 3, axis=-1) if channels == 1 else x  # fold == grey tiled to RGB
    with torch.no_grad():
        expected = [t.numpy().transpose(0, 2, 3, 4, 1)
                    for t in net.features(torch.from_numpy(x_torch.transpose(0, 4, 1, 2, 3).copy()))]
    got = [np.asarray(t) for t in encoder(x, training=False)]
    assert [g.shape for g in got] == [e.shape for e in expected]
    for stage, (g, e) in enumerate(zip(got, expected)):
        assert _rel_err(g, e) < 1e-4, f"stage {stage}: relative error {_rel_err(g, e):.2e}"


def test_build_model_loads_pth_and_npz_files(tmp_path):
    torch, net = _torch_r3d18()
    pth = tmp_path / "r3d_18.pth"
    torch.save(net.state_dict(), pth)
    npz = save_state_dict_npz(pth, tmp_path / "r3d_18.npz")
    stem = net.state_dict()["stem.0.weight"].numpy().sum(axis=1, keepdims=True).transpose(2, 3, 4, 1, 0)
    for path in (pth, npz):
        model = tlunet.build_model("resnet18_3d_unet", input_shape=(8, 32, 32, 1), encoder_weights=path)
        np.testing.assert_allclose(model.get_layer("encoder").get_layer("stem_conv").kernel.numpy(), stem,
                                   rtol=1e-6)
        var = model.get_layer("encoder").get_layer("layer3_0_downsample_bn").moving_variance.numpy()
        np.testing.assert_allclose(var, net.state_dict()["layer3.0.downsample.1.running_var"].numpy())


def _fake_state_dict(channels=3):
    """A state_dict with r3d_18's keys and shapes, made without torch."""
    encoder = build_r3d18_encoder((8, 16, 16, channels))
    state = {}
    for layer in encoder.layers:
        if not layer.weights:
            continue
        from tlunet.models.resnet3d import _torch_key
        key = _torch_key(layer.name)
        if layer.name.endswith("_conv"):
            state[f"{key}.weight"] = np.ones(tuple(layer.kernel.shape), "float32").transpose(4, 3, 0, 1, 2)
        else:
            for n in ("weight", "bias", "running_mean", "running_var"):
                state[f"{key}.{n}"] = np.ones(layer.weights[0].shape, "float32")
    return state


def test_incomplete_or_misshaped_state_dict_is_refused_whole(tmp_path):
    state = _fake_state_dict()
    del state["layer4.1.conv2.1.running_var"]
    encoder = build_r3d18_encoder((8, 16, 16, 1))
    before = encoder.get_layer("stem_conv").kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"layer4\.1\.conv2\.1\.running_var"):
        load_r3d18_state_dict(encoder, state)
    np.testing.assert_array_equal(encoder.get_layer("stem_conv").kernel.numpy(), before)  # nothing half-loaded

    state = _fake_state_dict()
    state["layer2.0.conv1.0.weight"] = state["layer2.0.conv1.0.weight"][:, :32]
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    with pytest.raises(ValueError, match=r"bad\.npz.*layer2\.0\.conv1\.0"):
        tlunet.build_model("resnet18_3d_unet", input_shape=(8, 32, 32, 1), encoder_weights=path)


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth.*r3d_18-b3b3357e"):
        read_state_dict(tmp_path / "nowhere.pth")
    wrong = tmp_path / "weights.txt"
    wrong.write_text("x")
    with pytest.raises(ValueError, match="weights.txt.*extension"):
        read_state_dict(wrong)
    with pytest.raises(ValueError, match="encoder_weights"):
        tlunet.build_model("resnet18_3d_unet", input_shape=(8, 32, 32, 1), encoder_weights=3)
