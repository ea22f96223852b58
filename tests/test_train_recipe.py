"""The training recipe: the official configs' numbers, layer-wise lr decay groups, the lr schedule."""
import json
import logging

import pytest
import torch
from torch import nn

from rapidpose.errors import InputError
from rapidpose.model.vitpose import VARIANTS, ViTPose, ViTPoseConfig
from rapidpose.train.recipe import (
    Recipe, Schedule, drop_path_rates, layer_id, make_optimizer, param_groups, recipe_for, scaled_lr)

# From ViTAE-Transformer/ViTPose configs/.../coco/ViTPose_{small,base,large,huge}_coco_256x192.py:
# (layer_decay_rate, drop_path_rate, num_layers)
OFFICIAL = {"s": (0.8, 0.1, 12), "b": (0.75, 0.3, 12), "l": (0.8, 0.5, 24), "h": (0.85, 0.55, 32)}


@pytest.fixture(scope="module", params=["s", "b"])
def vitpose(request):
    return request.param, ViTPose(ViTPoseConfig.from_variant(request.param))


def group_of(groups):
    """Parameter id -> its group, failing if a parameter is in two groups."""
    seen = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in seen, "a parameter is in two groups"
            seen[id(p)] = group
    return seen


# ---------------------------------------------------------------- the recipe


@pytest.mark.parametrize("variant", ["s", "b", "l", "h"])
def test_variant_recipes_match_the_official_configs(variant):
    rate, drop_path, depth = OFFICIAL[variant]
    r = recipe_for(variant)
    assert VARIANTS[variant][1] == depth
    assert (r.layer_decay, r.drop_path) == (rate, drop_path)
    assert (r.lr, r.base_batch, r.betas, r.weight_decay, r.clip_grad) == (5e-4, 512, (0.9, 0.999), 0.1, 1.0)
    assert (r.epochs, r.decay_epochs, r.decay_factor) == (210, (170, 200), 0.1)
    assert (r.warmup_iters, r.warmup_ratio) == (500, 0.001)
    assert r.sigma == 2.0
    assert (r.flip_p, r.half_body_p, r.half_body_min) == (0.5, 0.3, 8)
    assert (r.scale_factor, r.rotation_factor, r.rotation_p) == (0.5, 40.0, 0.6)


def test_variant_names_are_those_of_the_model():
    assert recipe_for("B") == recipe_for("b")
    assert ViTPoseConfig.from_variant("l").variant == "l" and recipe_for("l").layer_decay == 0.8


def test_custom_variant_gets_b_with_a_log_message(caplog):
    with caplog.at_level(logging.INFO, logger="rapidpose"):
        r = recipe_for(ViTPoseConfig(dim=512, depth=6, heads=8).variant)
    assert r == recipe_for("b")
    assert "ViTPose-B" in caplog.text


def test_unknown_variant_is_an_input_error():
    with pytest.raises(InputError, match="'xl'.*s, b, l, h, custom"):
        recipe_for("xl")


def test_overrides():
    r = recipe_for("l", lr=1e-3, decay_epochs=[5, 8], epochs=10, warmup_iters=0)
    assert (r.lr, r.decay_epochs, r.epochs, r.warmup_iters, r.layer_decay) == (1e-3, (5, 8), 10, 0, 0.8)
    assert recipe_for("s", layer_decay=0.9).layer_decay == 0.9


def test_unknown_override_names_it_and_lists_the_valid_ones():
    with pytest.raises(InputError) as err:
        recipe_for("b", learning_rate=1e-3)
    assert "'learning_rate'" in str(err.value)
    assert "lr" in str(err.value) and "layer_decay" in str(err.value) and "rotation_p" in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ({"layer_decay": 1.5}, "layer_decay"), ({"warmup_ratio": 0}, "warmup_ratio"),
    ({"decay_epochs": (200, 170)}, "decay_epochs"), ({"lr": "fast"}, "lr"), ({"epochs": 2.5}, "epochs"),
    ({"betas": 0.9}, "betas"), ({"flip_p": 2}, "flip_p"), ({"epochs": 100}, "decay_epochs"),
])
def test_bad_values_are_input_errors(override, fragment):
    with pytest.raises(InputError, match=fragment):
        recipe_for("b", **override)


def test_to_dict_from_dict_round_trip():
    r = recipe_for("h", lr=2e-4, betas=(0.9, 0.99), decay_epochs=(3, 4), epochs=5)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["betas"] == [0.9, 0.99] and d["layer_decay"] == 0.85
    back = Recipe.from_dict(d)
    assert back == r and isinstance(back.betas, tuple) and isinstance(back.decay_epochs, tuple)
    with pytest.raises(InputError, match="'nope'"):
        Recipe.from_dict({**d, "nope": 1})


def test_scaled_lr_is_linear_in_the_batch():
    r = recipe_for("b")
    assert scaled_lr(r, 64) == pytest.approx(6.25e-5)
    assert scaled_lr(r, 512) == pytest.approx(5e-4)
    with pytest.raises(InputError, match="batch size"):
        scaled_lr(r, 0)


def test_drop_path_rates_are_the_official_linspace():
    rates = drop_path_rates(0.3, 12)
    assert rates == pytest.approx(torch.linspace(0, 0.3, 12).tolist(), abs=1e-7)
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3) and len(rates) == 12
    assert drop_path_rates(0.5, 1) == [0.0]
    with pytest.raises(InputError):
        drop_path_rates(1.5, 12)


# ---------------------------------------------------------------- layer-wise lr decay


def test_layer_ids_follow_the_official_rule():
    assert layer_id("backbone.patch_embed.proj.weight", 12) == 0
    assert layer_id("backbone.pos_embed", 12) == 0
    assert layer_id("backbone.cls_token", 12) == 0
    assert layer_id("backbone.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id("backbone.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("backbone.last_norm.weight", 12) == 13
    assert layer_id("keypoint_head.final_layer.weight", 12) == 13
    with pytest.raises(InputError, match="block 12"):
        layer_id("backbone.blocks.12.norm1.weight", 12)


def test_lr_scales_of_a_real_vitpose(vitpose):
    variant, model = vitpose
    rate, depth = OFFICIAL[variant][0], VARIANTS[variant][1]
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=rate)
    by_param = group_of(groups)
    params = dict(model.named_parameters())
    expected_layer = {
        "backbone.patch_embed.proj.weight": 0, "backbone.patch_embed.proj.bias": 0, "backbone.pos_embed": 0,
        "backbone.blocks.0.attn.qkv.weight": 1, "backbone.blocks.0.norm1.weight": 1,
        f"backbone.blocks.{depth - 1}.mlp.fc2.weight": depth, "backbone.last_norm.weight": depth + 1,
        "keypoint_head.deconv_layers.0.weight": depth + 1, "keypoint_head.final_layer.weight": depth + 1,
    }
    for name, layer in expected_layer.items():
        group = by_param[id(params[name])]
        assert group["lr_scale"] == pytest.approx(rate ** (depth + 1 - layer)), name
        assert group["lr"] == pytest.approx(1e-3 * rate ** (depth + 1 - layer)), name
        assert group["name"].startswith(f"layer_{layer}_"), name
    assert by_param[id(params["keypoint_head.final_layer.weight"])]["lr"] == pytest.approx(1e-3)
    assert by_param[id(params["backbone.pos_embed"])]["lr"] == pytest.approx(1e-3 * rate ** (depth + 1))


def test_every_trainable_parameter_is_in_exactly_one_group(vitpose):
    _, model = vitpose
    depth = len(model.backbone.blocks)
    groups = param_groups(model, 1e-3, 0.1, 0.75)
    by_param = group_of(groups)
    assert set(by_param) == {id(p) for p in model.parameters()}
    assert len(groups) == 2 * (depth + 2)  # decay and no-decay for the embeddings, each block and the top
    assert len({g["name"] for g in groups}) == len(groups)


def test_no_decay_on_biases_norms_and_the_position_embedding(vitpose):
    _, model = vitpose
    by_param = group_of(param_groups(model, 1e-3, 0.1, 0.75))
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim == 1 or name == "backbone.pos_embed" else 0.1
        assert by_param[id(p)]["weight_decay"] == expected, name
    params = dict(model.named_parameters())
    for name in ["backbone.blocks.0.norm1.weight", "backbone.last_norm.bias", "backbone.blocks.3.attn.qkv.bias",
                 "keypoint_head.deconv_layers.1.weight", "keypoint_head.final_layer.bias", "backbone.pos_embed"]:
        assert by_param[id(params[name])]["weight_decay"] == 0.0, name
    for name in ["backbone.patch_embed.proj.weight", "backbone.blocks.3.attn.qkv.weight",
                 "backbone.blocks.3.mlp.fc1.weight", "keypoint_head.deconv_layers.0.weight",
                 "keypoint_head.final_layer.weight"]:
        assert by_param[id(params[name])]["weight_decay"] == 0.1, name


def test_frozen_parameters_are_left_out():
    model = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))
    model.backbone.requires_grad_(False)
    groups = param_groups(model, 1e-3, 0.1, 0.8)
    assert set(group_of(groups)) == {id(p) for p in model.keypoint_head.parameters()}
    assert {g["name"] for g in groups} == {"layer_3_decay", "layer_3_no_decay"}
    model.requires_grad_(False)
    with pytest.raises(InputError, match="frozen"):
        param_groups(model, 1e-3, 0.1, 0.8)


def test_vitpose_plus_experts_and_extra_heads():
    model = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12, num_experts=6, part_features=96,
                                  associate_keypoints=(14, 16)))
    groups = param_groups(model, 1e-3, 0.1, 0.8)
    by_param = group_of(groups)
    assert set(by_param) == {id(p) for p in model.parameters()}
    params = dict(model.named_parameters())
    assert by_param[id(params["backbone.blocks.1.mlp.experts.5.weight"])]["name"] == "layer_2_decay"
    assert by_param[id(params["backbone.blocks.0.mlp.experts.0.bias"])]["name"] == "layer_1_no_decay"
    assert by_param[id(params["associate_keypoint_heads.1.final_layer.weight"])]["name"] == "layer_3_decay"


def test_wrapped_models_keep_their_layer_decay():
    class Wrapper(nn.Module):  # as DistributedDataParallel: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))
    plain = param_groups(model, 1e-3, 0.1, 0.8)
    wrapped = param_groups(Wrapper(model), 1e-3, 0.1, 0.8)
    def summary(groups):
        return [(g["name"], g["lr"], len(g["params"])) for g in groups]

    assert summary(wrapped) == summary(plain)
    with pytest.raises(InputError, match="ViTPose"):
        param_groups(nn.Linear(2, 2), 1e-3, 0.1, 0.8)


def test_make_optimizer():
    model = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))
    opt = make_optimizer(model, recipe_for("s"), batch_size=64)
    assert isinstance(opt, torch.optim.AdamW)
    head = [g for g in opt.param_groups if g["name"] == "layer_3_decay"][0]
    embed = [g for g in opt.param_groups if g["name"] == "layer_0_no_decay"][0]
    assert head["lr"] == pytest.approx(6.25e-5) and head["weight_decay"] == 0.1
    assert embed["lr"] == pytest.approx(6.25e-5 * 0.8 ** 3) and embed["weight_decay"] == 0.0
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


# ---------------------------------------------------------------- the lr schedule


def test_warm_up_values():
    s = Schedule(recipe_for("b"), iters_per_epoch=293, epochs=210)
    assert s.warmup_iters == 500
    assert s.factor(0) == pytest.approx(0.001)
    assert s.factor(250) == pytest.approx(0.5005)
    assert s.factor(499) == pytest.approx(1 - 0.999 / 500)
    assert s.factor(500) == 1.0
    assert s.factor(1000) == 1.0


def test_official_schedule_decays_at_epochs_170_and_200():
    ipe = 293  # COCO train2017: 149,813 people / 512
    s = Schedule(recipe_for("b"), iters_per_epoch=ipe, epochs=210)
    assert s.decay_iters == (170 * ipe, 200 * ipe)
    assert s.factor(170 * ipe - 1) == 1.0
    assert s.factor(170 * ipe) == pytest.approx(0.1)
    assert s.factor(200 * ipe - 1) == pytest.approx(0.1)
    assert s.factor(200 * ipe) == pytest.approx(0.01)
    assert s.factor(210 * ipe - 1) == pytest.approx(0.01)
    assert "500" in s.describe() and str(170 * ipe) in s.describe() and "official schedule" in s.describe()


def test_short_fine_tune_is_scaled():
    s = Schedule(recipe_for("b"), iters_per_epoch=100, epochs=3)
    assert s.total_iters == 300 and s.warmup_iters <= 30
    first, second = round(300 * 170 / 210), round(300 * 200 / 210)
    assert s.decay_iters == (first, second)
    assert s.factor(0) == pytest.approx(0.001)
    assert all(s.factor(i) == 1.0 for i in range(s.warmup_iters, first))  # most of the run learns at full lr
    assert s.factor(first) == pytest.approx(0.1) and s.factor(second) == pytest.approx(0.01)
    text = s.describe()
    assert "capped" in text and f"{first}, {second}" in text and "same fractions" in text


def test_schedule_follows_a_recipe_override():
    s = Schedule(recipe_for("b", epochs=10, decay_epochs=(5, 8), warmup_iters=0), iters_per_epoch=10, epochs=10)
    assert s.decay_iters == (50, 80) and s.warmup_iters == 0
    assert s.factor(0) == 1.0 and s.factor(50) == pytest.approx(0.1)


def test_schedule_errors():
    with pytest.raises(InputError, match="iterations per epoch"):
        Schedule(recipe_for("b"), iters_per_epoch=0, epochs=3)
    with pytest.raises(InputError, match="iteration"):
        Schedule(recipe_for("b"), 10, 3).factor(-1)


def test_apply_sets_every_group_and_keeps_the_initial_lr():
    model = ViTPose(ViTPoseConfig(dim=384, depth=2, heads=12))
    opt = make_optimizer(model, recipe_for("s"), batch_size=64)
    before = [g["lr"] for g in opt.param_groups]
    s = Schedule(recipe_for("s"), iters_per_epoch=293, epochs=210)
    assert s.apply(opt, 0) == pytest.approx(6.25e-5 * 0.001)
    assert [g["initial_lr"] for g in opt.param_groups] == before
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * 0.001 for lr in before])
    assert s.apply(opt, 250) == pytest.approx(6.25e-5 * 0.5005)  # from initial_lr, not the warm-up lr
    assert s.apply(opt, 170 * 293) == pytest.approx(6.25e-6)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * 0.1 for lr in before])
    # A resumed run: the optimizer's state dict carries initial_lr.
    fresh = make_optimizer(model, recipe_for("s"), batch_size=64)
    fresh.load_state_dict(opt.state_dict())
    s.apply(fresh, 600)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx(before)
