"""The training networks: shapes, parameter counts from layer shapes, gradients, modes, registry."""
import pytest
import torch

from instahide.train.models import (MODELS, FastNet, MnistNet, PreActResNet18, build_model,
                                    count_parameters)

INPUTS = [(3, 32), (1, 28), (1, 8)]


def conv(c_in, c_out, k):  # bias-free convolution
    return c_in * c_out * k * k


def bn(c):  # weight and bias
    return 2 * c


def linear(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def preact_resnet18_params(num_classes, in_channels, width, stem_bn=True):
    total = conv(in_channels, width, 3) + (bn(width) if stem_bn else 0)
    c_in = width
    for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
        c_out = mult * width
        for s in (stride, 1):
            total += bn(c_in) + conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3)
            if s != 1 or c_in != c_out:
                total += conv(c_in, c_out, 1)  # 1x1 projection shortcut
            c_in = c_out
    return total + linear(8 * width, num_classes)


def fastnet_params(num_classes, in_channels, widths):
    total = conv(in_channels, widths[0], 3) + bn(widths[0])
    c_in = widths[0]
    for c_out in widths:
        total += conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
        c_in = c_out
    return total + linear(widths[-1], num_classes, bias=False)


def test_preact_resnet18_parameter_count_matches_layer_shapes():
    model = PreActResNet18(num_classes=10, in_channels=3)
    assert count_parameters(model) == preact_resnet18_params(10, 3, 64)
    assert 11.1e6 < count_parameters(model) < 11.2e6
    # kuangliu's pytorch-cifar PreActResNet18 (no stem BN): its widely quoted 11,171,146.
    kuangliu = PreActResNet18(stem_bn=False)
    assert count_parameters(kuangliu) == preact_resnet18_params(10, 3, 64, stem_bn=False) == 11_171_146
    assert count_parameters(PreActResNet18(100, 1, width=16)) == preact_resnet18_params(100, 1, 16)


def test_small_nets_parameter_counts():
    assert count_parameters(FastNet()) == fastnet_params(10, 3, (64, 256, 256))
    assert 1.9e6 < count_parameters(FastNet()) < 2.1e6
    half = build_model("fastnet", 10, 3, width=0.5)
    assert count_parameters(half) == fastnet_params(10, 3, (32, 128, 128))
    mnist = MnistNet()
    expected = conv(1, 32, 3) + bn(32) + conv(32, 64, 3) + bn(64) + linear(64 * 4 * 4, 128) + linear(128, 10)
    assert count_parameters(mnist) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size", INPUTS)
def test_output_shapes(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_the_first_layer(name):
    torch.manual_seed(0)
    channels, size = (1, 8) if name == "mnistnet" else (3, 16)
    model = build_model(name, 10, channels)
    loss = model(torch.randn(4, channels, size, size)).logsumexp(1).mean()
    loss.backward()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.shape[1] == channels
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_mode_is_per_sample_and_train_mode_uses_batch_statistics(name):
    torch.manual_seed(0)
    channels = 1 if name == "mnistnet" else 3
    model = build_model(name, 10, channels)
    x = torch.randn(4, channels, 8, 8)
    model.train()
    batch_out = model(x)
    assert not torch.allclose(model(x[:2])[0], batch_out[0], atol=1e-5)  # BN batch statistics
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
        assert torch.equal(model(x), model(x))


def test_stem_bn_option_and_wrong_input():
    assert PreActResNet18().bn1 is not None and PreActResNet18(stem_bn=False).bn1 is None
    with pytest.raises(ValueError, match=r"Invalid input shape for FastNet, we expect \(B, 3, H, W\). Got: \(2, 1, 8, 8\)"):
        FastNet()(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Invalid input shape"):
        MnistNet()(torch.randn(1, 8, 8))
    with pytest.raises(ValueError, match="3 widths"):
        FastNet(widths=(64, 128))


def test_registry_and_build_model_errors():
    assert set(MODELS) == {"preact_resnet18", "fastnet", "mnistnet", "resnet10_224"}
    assert all(callable(ctor) and isinstance(desc, str) and desc for ctor, desc in MODELS.values())
    with pytest.raises(ValueError, match="unknown model 'resnet50'; known models: fastnet, mnistnet, preact_resnet18, resnet10_224"):
        build_model("resnet50", 10, 3)
    with pytest.raises(ValueError, match="width > 0"):
        build_model("fastnet", 10, 3, width=0)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        build_model("mnistnet", 0, 1)
    narrow = build_model("preact_resnet18", 10, 3, width=0.25)
    assert count_parameters(narrow) == preact_resnet18_params(10, 3, 16)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_classes="10"), TypeError, "num_classes must be an integer, got str"),
    (dict(in_channels=1.5), TypeError, "in_channels must be an integer"),
    (dict(num_classes=True), TypeError, "num_classes must be an integer"),
    (dict(width="2"), TypeError, "width must be a number"),
    (dict(width=float("nan")), ValueError, "width > 0 and finite"),
    (dict(width=float("inf")), ValueError, "width > 0 and finite"),
    (dict(num_classes=10 ** 12), ValueError, "num_classes >= 1 and at most"),
    (dict(width=1e9), ValueError, "would be far larger; at most 1,073,741,824 parameters"),
    (dict(width=500.0), ValueError, "would have [0-9,]+ parameters; at most"),
    (dict(num_classes=2 ** 24), ValueError, "parameters; at most"),
])
def test_build_model_refuses_bad_types_and_huge_models_before_allocating(kwargs, error, match):
    args = dict(name="preact_resnet18", num_classes=10, in_channels=3, width=1.0) | kwargs
    with pytest.raises(error, match=match):
        build_model(**args)


def test_the_size_check_draws_no_random_numbers():
    torch.manual_seed(0)
    a = build_model("fastnet", 10, 3)
    torch.manual_seed(0)
    b = FastNet(10, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_count_parameters_trainable_only():
    model = MnistNet()
    model.classifier.requires_grad_(False)
    frozen = linear(64 * 16, 128) + linear(128, 10)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen


# -- the sign-invariant input stage -----------------------------------------------------------------
@pytest.mark.parametrize("name,channels,size,width", [("preact_resnet18", 3, 32, 0.125), ("fastnet", 3, 32, 0.25),
                                                      ("mnistnet", 1, 28, 0.5)])
def test_sign_invariant_output_does_not_depend_on_the_mask(name, channels, size, width):
    from instahide import encrypt
    from instahide.scheme import KeyGenerator

    torch.manual_seed(0)
    model = build_model(name, 10, channels, width=width, sign_invariant=True)
    x = torch.randn(6, channels, size, size)
    e = encrypt(x, k=2, generator=KeyGenerator.from_seed(1)).images
    remasked = e * torch.where(torch.rand_like(e) < 0.5, -1.0, 1.0)      # any other mask of the same mixture
    for train_mode in (True, False):                                      # batch and running BN statistics
        model.train(train_mode)
        with torch.no_grad():
            out = model(e)
            assert torch.equal(out, model(-e)) and torch.equal(out, model(remasked))
    plain = build_model(name, 10, channels, width=width)
    plain.eval()
    with torch.no_grad():
        assert not torch.equal(plain(e), plain(-e))                       # without the stage it does depend


def test_sign_invariant_wraps_any_model_once_and_keeps_its_weights():
    from instahide import SignInvariant, sign_invariant

    user = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    wrapped = sign_invariant(user)
    assert isinstance(wrapped, SignInvariant) and sign_invariant(wrapped) is wrapped and wrapped.model is user
    x = torch.randn(5, 3, 2, 2)
    assert torch.equal(wrapped(x), user(x.abs())) and torch.equal(wrapped(x), wrapped(-x))
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in user.state_dict()}
    for bad in (None, user.state_dict(), lambda x: x):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            sign_invariant(bad)
