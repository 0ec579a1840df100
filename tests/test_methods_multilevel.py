"""DetCo and MoDeCo: the jigsaw, one finite logged term per level, zero weights removing terms exactly, each
term attached to its own encoder level, and parameter validation."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sslseg.config import PretrainConfig
from sslseg.errors import ConfigError
from sslseg.methods.detco import jigsaw
from sslseg.pretrain import build_method

VIEW = 32
DETCO_TERMS = {f"stride{s}/{k}" for s in (4, 8, 16, 32) for k in ("g2g", "l2l", "l2g")}
MODECO_TERMS = {"global", "stride32", "stride16", "stride8", "stride4", "stride2"}


def make(name: str, **params):
    cfg = PretrainConfig.model_validate(
        {"method": name, "params": params, "views": {"size": VIEW}, "train": {"batch_size": 8, "epochs": 1}}
    )
    return build_method(cfg, 1)


def reassemble(tiles: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Put shuffled tiles B×9×C×t×t back in their grid cells (inverse permutation) and stitch the image."""
    b, _, c, t, _ = tiles.shape
    grid = torch.empty_like(tiles)
    for i in range(b):
        grid[i, perm[i]] = tiles[i]
    return grid.reshape(b, 3, 3, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 3 * t, 3 * t)


def test_jigsaw_shuffles_tiles_and_covers_the_view():
    torch.manual_seed(0)
    x = torch.randn(4, 3, VIEW, VIEW)
    tiles, perm = jigsaw(x, 8)
    assert tiles.shape == (4, 9, 3, 8, 8)
    assert all(sorted(p.tolist()) == list(range(9)) for p in perm)  # each row a permutation of the 9 cells
    assert (perm != torch.arange(9)).any(dim=1).all()  # and really shuffled
    assert len({tuple(p.tolist()) for p in perm}) > 1  # independently per image
    resized = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(reassemble(tiles, perm), resized)
    # tile j is grid cell perm[j] (row-major) of the resized view
    r, c = divmod(int(perm[1, 0]), 3)
    torch.testing.assert_close(tiles[1, 0], resized[1, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8])


def test_jigsaw_of_a_view_three_tiles_wide_is_not_resampled():
    x = torch.randn(2, 1, 24, 24)
    tiles, perm = jigsaw(x, 8)
    assert torch.equal(reassemble(tiles, perm), x)


@pytest.mark.parametrize(("name", "expected"), [("detco", DETCO_TERMS), ("modeco", MODECO_TERMS)])
def test_every_level_term_is_finite_and_logged(name, expected):
    torch.manual_seed(0)
    method = make(name)
    data = DataLoader(torch.rand(8, 1, 2 * VIEW, 2 * VIEW), batch_size=8)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(method, data)
    assert set(method.terms) == expected
    assert all(torch.isfinite(t) and t > 0 for t in method.terms.values())
    logged = {k.removeprefix("train/") for k in trainer.callback_metrics if k.startswith("train/")}
    assert logged == expected | {"loss"}


@pytest.mark.parametrize(
    ("name", "weights", "kept"),
    [
        ("detco", {"stage_weights": [0.0, 0.4, 0.0, 1.0]}, {"stride8": 0.4, "stride32": 1.0}),
        (
            "modeco",
            {"level_weights": [1.0, 0.0, 0.1, 0.0, 0.7, 0.0]},
            {"global": 1.0, "stride16": 0.1, "stride4": 0.7},
        ),
    ],
)
def test_zero_weights_remove_their_terms(name, weights, kept):
    torch.manual_seed(0)
    full, part = make(name), make(name, **weights)
    missing, unexpected = part.load_state_dict(full.state_dict(), strict=False)
    assert not missing  # the partial model is the full one minus the removed heads and queues
    removed = {k.split(".")[1].split("_")[0] for k in unexpected}  # e.g. heads.stride4_global.0.weight
    assert {k.split(".")[0] for k in unexpected} == {"heads", "key_heads", "queues"}
    views = full.view_maker(torch.rand(8, 1, 2 * VIEW, 2 * VIEW), 2)
    torch.manual_seed(1)  # the same jigsaw shuffles for both models
    full_loss, _ = full.ssl_loss(views)
    torch.manual_seed(1)
    part_loss, _ = part.ssl_loss(views)

    def level(term: str) -> str:
        return term.split("/")[0]

    assert {level(t) for t in part.terms} == set(kept)
    assert {level(t) for t in full.terms} == set(kept) | removed and not removed & set(kept)
    expected = sum(kept[level(t)] * v for t, v in full.terms.items() if level(t) in kept)
    torch.testing.assert_close(part_loss.detach(), expected)
    for t in part.terms:  # each kept term is unchanged by removing the others
        torch.testing.assert_close(part.terms[t], full.terms[t])


@pytest.mark.parametrize(
    ("name", "weights", "reached", "untouched"),
    [
        ("detco", {"stage_weights": [1.0, 0.0, 0.0, 0.0]}, "layer1.", "layer2."),
        ("modeco", {"level_weights": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]}, "conv1.", "layer1."),
    ],
)
def test_each_term_trains_its_own_level(name, weights, reached, untouched):
    torch.manual_seed(0)
    method = make(name, **weights)
    loss, _ = method.ssl_loss(method.view_maker(torch.rand(8, 1, 2 * VIEW, 2 * VIEW), 2))
    loss.backward()
    grads = {k: p.grad for k, p in method.encoder.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for k, g in grads.items() if k.startswith(reached))
    assert all(g is None for k, g in grads.items() if k.startswith(untouched))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("detco", {"stage_weights": [0.1, 0.4, 1.0]}, "stage_weights.*needs 4 weights"),
        ("detco", {"stage_weights": [0.0, 0.0, 0.0, 0.0]}, "stage_weights.*at least one"),
        ("detco", {"stage_weights": [0.1, -0.4, 0.7, 1.0]}, "stage_weights.*>= 0"),
        ("detco", {"tile_fraction": 0.5}, "tile_fraction"),
        ("modeco", {"level_weights": [1.0, 0.1, 0.1, 0.4, 0.7]}, "level_weights.*needs 6 weights.*global"),
        ("modeco", {"level_weights": [0.0] * 6}, "level_weights.*at least one"),
        ("modeco", {"queue_size": 0}, "queue_size"),
    ],
)
def test_invalid_params_name_the_key(name, params, match):
    with pytest.raises(ConfigError, match=f"(?s){match}"):
        make(name, **params)
