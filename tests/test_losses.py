import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from mammolens.train.config import TrainConfig
from mammolens.train.losses import ClassificationLoss, class_weights, num_outputs, probabilities
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1, 2, 0, 0])


def test_num_outputs():
    assert num_outputs(2, "bce") == 1
    assert num_outputs(2, "ce") == 2
    assert num_outputs(7, "focal") == 7
    with pytest.raises(ConfigError, match="binary"):
        num_outputs(3, "bce")
    with pytest.raises(ConfigError, match="unknown loss 'hinge'; known: bce, ce, focal"):
        num_outputs(2, "hinge")


def test_probabilities_one_logit_is_sigmoid_and_many_are_softmax(batch):
    z = torch.tensor([[-3.0], [0.0], [2.5]])
    p = probabilities(z)
    assert p.shape == (3, 2)
    torch.testing.assert_close(p[:, 1], torch.sigmoid(z[:, 0]))
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    logits, _ = batch
    torch.testing.assert_close(probabilities(logits), torch.softmax(logits, 1))


def test_weighted_ce_matches_torch(batch):
    logits, y = batch
    w = torch.tensor([0.5, 2.0, 3.0])
    torch.testing.assert_close(ClassificationLoss("ce", w)(logits, y), F.cross_entropy(logits, y, weight=w))
    torch.testing.assert_close(ClassificationLoss("ce")(logits, y), F.cross_entropy(logits, y))


def test_weighted_bce_is_the_normalised_weighted_mean():
    z = torch.tensor([[0.3], [-1.2], [2.0], [0.1]])
    y = torch.tensor([1, 0, 1, 0])
    w = torch.tensor([1.0, 4.0])
    per = F.binary_cross_entropy_with_logits(z[:, 0], y.float(), reduction="none")
    expected = (per * w[y]).sum() / w[y].sum()
    torch.testing.assert_close(ClassificationLoss("bce", w)(z, y), expected)
    # the same model as two logits [0, z] under softmax CE gives the same loss
    torch.testing.assert_close(
        ClassificationLoss("ce", w)(torch.cat([torch.zeros_like(z), z], 1), y), expected
    )


def test_focal_reduces_to_ce_at_gamma_zero_and_downweights_easy_examples(batch):
    logits, y = batch
    w = torch.tensor([1.0, 2.0, 0.5])
    torch.testing.assert_close(ClassificationLoss("focal", w, 0.0)(logits, y), F.cross_entropy(logits, y, weight=w))
    p_t = torch.softmax(logits, 1).gather(1, y[:, None])[:, 0]
    by_hand = ((1 - p_t) ** 2 * -p_t.log() * w[y]).sum() / w[y].sum()
    torch.testing.assert_close(ClassificationLoss("focal", w, 2.0)(logits, y), by_hand)
    easy = torch.tensor([[6.0, -6.0]])
    zero = torch.tensor([0])
    assert ClassificationLoss("focal", None, 2.0)(easy, zero) < 1e-3 * F.cross_entropy(easy, zero)


def test_focal_accepts_a_single_logit():
    z, y = torch.tensor([[1.5], [-0.5]]), torch.tensor([1, 1])
    torch.testing.assert_close(
        ClassificationLoss("focal", None, 0.0)(z, y), F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    )


def test_class_weights():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    balanced = class_weights("balanced", labels, 3)
    reference = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(balanced.numpy(), reference, rtol=1e-6)
    assert class_weights("none", labels, 3) is None
    assert class_weights([1, 2, 3], labels, 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="class_weights has 2 values but the task has 3 classes"):
        class_weights([1.0, 2.0], labels, 3)
    with pytest.raises(ConfigError, match="positive"):
        class_weights([1.0, 0.0, 1.0], labels, 3)
    with pytest.raises(DataError, match=r"class\(es\) \[3\] have no training samples"):
        class_weights("balanced", labels, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimizer": "adamx"}, "unknown optimizer 'adamx'; known: adam, adamw, rmsprop, sgd"),
        ({"scheduler": "linear"}, "unknown scheduler 'linear'; known: cosine, none, plateau, step"),
        ({"loss": "hinge"}, "unknown loss 'hinge'; known: bce, ce, focal"),
        ({"class_weights": "auto"}, "'auto' is not 'none', 'balanced'"),
        ({"lr": -1}, "train.lr: must be a positive number"),
        ({"transfer": "partial"}, "train.transfer: 'partial' is not one of"),
        ({"feature_fast_path": True}, "needs transfer: frozen"),
        ({"feature_fast_path": True, "transfer": "frozen", "augment": {"hflip": True}}, "set augment to null"),
        ({"augment": {"rotation": 270}}, "train.augment.rotation: 270.0 is not within 0..180"),
        ({"augment": {"zoom": [1.2, 0.8]}}, "low <= high"),
        ({"augment": {"flip": True}}, "unknown config key 'train.augment.flip'"),
        ({"epochs": 2, "transfer": "finetune-last-N", "head_epochs": 2}, "leave none of the 2"),
        ({"batch_sise": 4}, "unknown config key 'train.batch_sise'"),
    ],
)
def test_bad_train_config_is_one_line(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, data, "train")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_train_config_from_yaml_values():
    cfg = from_dict(
        TrainConfig,
        {"class_weights": [1, 3], "augment": {"rotation": 180, "hflip": True, "zoom": [0.9, 1.1]}, "devices": "auto"},
        "train",
    )
    assert cfg.class_weights == [1.0, 3.0]
    assert cfg.augment.zoom == (0.9, 1.1) and cfg.augment.rotation == 180.0
    assert cfg.devices == "auto"
