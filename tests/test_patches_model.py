"""The patch-classifier model: sliding-window scores equal scoring each patch alone, film scores are
the aggregation of the map, it round-trips through a Bundle, and bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammolens.models import create_model
from mammolens.patches.geometry import grid_positions
from mammolens.utils.errors import ConfigError, DataError


def _model(num_classes: int = 2, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {"backbone": "tiny", "patch_size": 16, "stride": 8, "aggregate": "max", "patch_batch": 5, **options}
    model = create_model("patch-classifier", num_classes, **settings).eval()
    with torch.no_grad():  # a head that separates patches, so the map is not flat
        model.patch_head.weight.normal_(0, 2.0)
        model.stage2.weight.normal_(0, 1.0)
    return model


def _films(n: int = 3, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(1)
    films = rng.random((n, 1, size, size), dtype=np.float32)
    films[:, :, :, 30:] = 0.0  # background on the right: those windows hold no breast
    return torch.from_numpy(films)


def test_sliding_window_scores_match_scoring_patches_one_by_one() -> None:
    model, films = _model(3), _films()
    with torch.inference_mode():
        maps = model.score_map(films)
        positions, (rows, cols) = grid_positions(films.shape[2:], 16, 8)
        assert maps.shape == (3, 3, rows, cols)
        for b in range(len(films)):
            for k, (y, x) in enumerate(positions):
                patch = films[b:b + 1, :, y:y + 16, x:x + 16]
                if (patch > 0).float().mean() >= model.min_tissue:
                    alone = torch.softmax(model.patch_head(model.encoder(patch)), dim=1)[0]
                else:
                    alone = torch.tensor([1.0, 0.0, 0.0])  # no breast: scored as normal tissue
                torch.testing.assert_close(maps[b, :, k // cols, k % cols], alone, rtol=1e-5, atol=1e-6)


def test_resized_patches_match_one_by_one_too() -> None:
    model, films = _model(2, input_size=24), _films(1)
    with torch.inference_mode():
        maps = model.score_map(films)
        patch = films[:, :, 0:16, 0:16]
        alone = torch.nn.functional.interpolate(patch, size=(24, 24), mode="bilinear", align_corners=False)
        expected = torch.softmax(model.patch_head(model.encoder(alone)), dim=1)[0]
    torch.testing.assert_close(maps[0, :, 0, 0], expected, rtol=1e-5, atol=1e-6)


def test_film_scores_aggregate_the_map() -> None:
    model, films = _model(2), _films()
    with torch.inference_mode():
        maps = model.score_map(films)
        proba = torch.softmax(model(films), dim=1)
        torch.testing.assert_close(proba[:, 1], maps[:, 1].flatten(1).amax(1).clamp_min(1e-6), rtol=1e-4, atol=1e-5)
        model.aggregate = "topk"
        top3 = maps[:, 1].flatten(1).topk(3, dim=1).values.mean(1)
        torch.testing.assert_close(torch.softmax(model(films), dim=1)[:, 1], top3, rtol=1e-4, atol=1e-5)
    multi = _model(4, normal_class=2, aggregate="topk")
    with torch.inference_mode():
        p = torch.softmax(multi(films), dim=1)
        assert torch.allclose(p.sum(1), torch.ones(3)) and (p > 0).all()


def test_it_round_trips_through_a_bundle(tmp_path) -> None:
    from mammolens.bundle.model import load_model_bundle, save_bundle

    model, films = _model(2, aggregate="stage2"), _films()
    save_bundle(tmp_path / "b", model, classes=["normal", "abnormal"], task="normal-abnormal",
                preprocess={"steps": [{"name": "resize", "size": 48}]}, normalisation={"mean": 0.0, "std": 1.0},
                metrics={}, provenance={}, config={})
    bundle = load_model_bundle(tmp_path / "b")
    with torch.inference_mode():
        expected = torch.softmax(model(films), dim=1).numpy()
    np.testing.assert_allclose(bundle.predict_proba(films[:, 0].numpy()), expected, rtol=1e-5, atol=1e-6)
    assert bundle.model.config["aggregate"] == "stage2" and bundle.model.patch_size == 16


def test_gradcam_on_the_map_layer_is_the_score_map() -> None:
    """The CAM target is the score map itself: explain's Grad-CAM peaks where the patch score does."""
    from mammolens.explain.methods import CAM_METHODS, CamRequest

    model, films = _model(2), _films(1)
    result = CAM_METHODS.get("gradcam")(CamRequest(model, films, model.cam_target_layers(), 1, False, 0.0))
    heat = next(iter(result.maps.values()))
    with torch.inference_mode():
        scores = model.score_map(films)[0, 1].numpy()
    assert heat.shape == (48, 48)
    positions, _ = grid_positions((48, 48), 16, 8)
    y, x = positions[int(np.argmax(scores))]  # the hottest patch's window holds the CAM's hottest pixel
    hy, hx = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert abs(hy - (y + 8)) <= 16 and abs(hx - (x + 8)) <= 16


@pytest.mark.parametrize(("options", "message"), [
    ({"stride": 0}, r"^model.options.stride: must be an integer >= 1 pixel \(a stride of 0 never moves\), got 0$"),
    ({"patch_size": 4}, r"^model.options.patch_size: must be an integer >= 8"),
    ({"aggregate": "mean"}, r"^model.options.aggregate: 'mean' is not one of max, topk, stage2, auto$"),
    ({"backbone": "resnet9"}, r"^model.options.backbone: unknown patch backbone 'resnet9'"),
    ({"training": {"positives": 3}}, r"unknown config key 'model.options.training.positives'"),
    ({"strid": 8}, r"^unknown option 'strid' for model 'patch-classifier'"),
    ({"input_size": 8}, r"^model.options.input_size: 0 \(as cut\) or an integer >= 16, got 8$"),
])
def test_bad_options_are_one_line(options, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _model(2, **options)
    assert "\n" not in str(info.value)


def test_a_patch_larger_than_the_film_is_one_line() -> None:
    model = _model(2, patch_size=64)
    with pytest.raises(DataError, match=r"^patch_size 64 is larger than the film \(48 pixels along one side\)") as info:
        model(_films())
    assert "\n" not in str(info.value)


def test_onnx_export_matches_torch_on_films_with_background(tmp_path) -> None:
    """The export runs every window through the encoder and masks the background ones (shapes may not
    depend on the data); it must score films with background as torch does."""
    from mammolens.bundle.model import load_model_bundle, save_bundle
    from mammolens.deploy.export import ModelSpec, compare_with_torch, export_onnx

    model = _model(3, aggregate="topk")
    save_bundle(tmp_path / "b", model, classes=["normal", "benign", "malignant"], task="normal-benign-malignant",
                preprocess={"steps": [{"name": "resize", "size": 48}]}, normalisation={"mean": 0.0, "std": 1.0},
                metrics={}, provenance={}, config={})
    report = export_onnx(tmp_path / "b", tmp_path / "m.onnx", exporter="torchscript", check_images=2)
    bundle = load_model_bundle(tmp_path / "b")
    diff, agreement = compare_with_torch(bundle, ModelSpec.from_bundle(bundle), report.path, _films(4)[:, 0].numpy())
    assert diff < 1e-5 and agreement == 1.0


def test_gradcam_on_the_map_layer_puts_each_window_where_it_lies() -> None:
    """Windows start every stride plus one flush with the far edge (60 px, patch 16, stride 12: 0, 12, 24, 36, 44):
    the CAM is the score map laid on those windows, not the grid stretched evenly over the film."""
    from mammolens.explain.methods import CAM_METHODS, CamRequest, _unit
    from mammolens.patches.geometry import map_to_pixels

    model = _model(2, patch_size=16, stride=12)
    films = torch.from_numpy(np.random.default_rng(3).random((1, 1, 60, 60), dtype=np.float32))
    result = CAM_METHODS.get("gradcam")(CamRequest(model, films, model.cam_target_layers(), 1, False, 0.0))
    with torch.inference_mode():
        scores = model.score_map(films)[0, 1].numpy()
    assert model.grid(60, 60) == ([0, 12, 24, 36, 44], [0, 12, 24, 36, 44])
    # Grad-CAM of a max-aggregated map: the class's own scores, min-max scaled (the library's), on the windows
    cells = (scores - scores.min()) / (scores.max() - scores.min() + 1e-7)
    expected = _unit(map_to_pixels(cells, model.grid(60, 60), 16, (60, 60)))
    np.testing.assert_allclose(result.maps["patches"], expected, atol=1e-4)
