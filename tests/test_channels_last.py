"""NHWC (channels-last) is a speed choice only: the layout must not change what a model learns or predicts."""

import numpy as np
import torch

from mammolens.train import ArrayDataModule, TrainConfig, fit
from mammolens.train.features import extract_features
from mammolens.train.tiny import TinyCNN
from mammolens.utils.configuration import from_dict


def _setup(channels_last: bool):
    rng = np.random.default_rng(0)
    arrays = {f"s{i}": rng.random((32, 32), dtype=np.float32) for i in range(12)}
    labels = np.arange(12) % 2
    # SGD, not Adam: Adam divides by the root of tiny second moments, which magnifies the float
    # rounding differences between the two layouts' kernels past any fixed tolerance.
    cfg = from_dict(TrainConfig, {"epochs": 2, "batch_size": 4, "lr": 0.01, "accelerator": "cpu", "progress": False,
                                  "patience": 0, "optimizer": "sgd", "channels_last": channels_last}, "train")
    dm = ArrayDataModule.from_config(arrays.__getitem__, list(arrays), labels, {"train": range(8), "val": range(8, 12)}, cfg)
    torch.manual_seed(0)
    return TinyCNN(), dm, cfg



def test_training_in_nhwc_learns_the_same_weights_and_leaves_them_contiguous(tmp_path):
    seen = []
    results = {}
    for cl in (False, True):
        model, dm, cfg = _setup(cl)
        # A conv with several input channels: with one channel both layouts have the same strides.
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        hook = conv.register_forward_pre_hook(
            lambda m, args: seen.append((cl, not args[0].is_contiguous() and m.weight.is_contiguous(memory_format=torch.channels_last)))
        )
        results[cl] = fit(model, dm, cfg, tmp_path / f"cl{cl}").model
        hook.remove()
    assert any(cl and nhwc for cl, nhwc in seen) and not any(not cl and nhwc for cl, nhwc in seen)
    for (name, a), b in zip(results[False].state_dict().items(), results[True].state_dict().values()):
        assert b.is_contiguous(), name  # safetensors and exporters need the default layout back
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_feature_extraction_in_nhwc_equals_the_plain_forward():
    model, dm, _ = _setup(True)
    model.eval()
    features = extract_features(model, dm, "train", torch.device("cpu"), progress=False)
    with torch.no_grad():
        plain = torch.cat([model.forward_features(x) for x, _ in dm.eval_dataloader("train")]).numpy()
    np.testing.assert_allclose(features, plain, rtol=1e-5, atol=1e-6)
    assert all(p.is_contiguous() for p in model.parameters())
