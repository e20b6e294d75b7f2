"""Starting a model from what is known: priors adapted by class name and band count, encoder weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from geolabel.classes import LabelClass
from geolabel.cli import cli
from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient
from tests.conftest import CLASSES
from trainer.errors import TrainerError
from trainer.fit import Sample, seed_torch
from trainer.loop import Start, run_round
from trainer.model import build_model
from trainer.start import prior_if_better
from trainer.transfer import (
    adapt_first_conv,
    adapt_prior,
    load_encoder_weights,
    resolve_prior,
    starting_manifest,
)
from trainer.versions import InputSpec, ModelManifest, ModelStore


def klass(index: int, name: str) -> LabelClass:
    return LabelClass(id=index, name=name, color="#ff0000")


def manifest(names: list[str], bands: int = 3, version: str = "v1", **extra: object) -> ModelManifest:
    spec = InputSpec(
        bands=list(range(1, bands + 1)), mean=[10.0 * b for b in range(bands)], std=[2.0] * bands
    )
    classes = [klass(i + 1, n) for i, n in enumerate(names)]
    return ModelManifest(version=version, created="", classes=classes, input=spec, **extra)  # type: ignore[arg-type]


def trained_like(prior: ModelManifest, seed: int = 1) -> torch.nn.Module:
    """A network whose every weight differs from a fresh one (random, batch-norm statistics too)."""
    seed_torch(seed)
    network = build_model(prior)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if tensor.dtype.is_floating_point:
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.1
                )
    return network.eval()


def fresh_for(target: ModelManifest, seed: int = 2) -> dict[str, torch.Tensor]:
    seed_torch(seed)
    return build_model(target).state_dict()


def outputs(network: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return network.eval()(pixels)


def test_a_version_started_from_its_prior_computes_exactly_what_the_prior_computes() -> None:
    prior = manifest(["building", "water"])
    network = trained_like(prior)
    draft = manifest(["building", "water"], version="v2")
    draft = draft.model_copy(update={"input": draft.input.model_copy(update={"mean": [0.0] * 3})})
    target = starting_manifest(prior, draft)
    assert target.input.mean == prior.input.mean  # same bands: the prior's normalisation is kept
    state, report = adapt_prior(prior, network.state_dict(), target, fresh_for(target))
    started = build_model(target)
    started.load_state_dict(state)
    pixels = torch.randn(2, 3, 64, 96)
    assert torch.equal(outputs(started, pixels), outputs(network, pixels))
    assert report.mapped == ("building", "water")
    assert report.new == ()
    assert report.dropped == ()


def test_classes_are_matched_by_name_and_new_classes_get_fresh_outputs() -> None:
    prior = manifest(["building", "road"])
    network = trained_like(prior)
    target = starting_manifest(prior, manifest(["road", "water", "building"], version="v2"))
    fresh = fresh_for(target)
    state, report = adapt_prior(prior, network.state_dict(), target, fresh)
    started = build_model(target)
    started.load_state_dict(state)
    pixels = torch.randn(1, 3, 64, 64)
    old, new = outputs(network, pixels), outputs(started, pixels)
    assert torch.equal(new[:, 0], old[:, 0])  # background
    assert torch.equal(new[:, 1], old[:, 2])  # road: the prior's second class
    assert torch.equal(new[:, 3], old[:, 1])  # building: the prior's first class
    weight = "segmentation_head.0.weight"
    assert torch.equal(state[weight][2], fresh[weight][2])  # water: fresh output weights
    assert not torch.equal(new[:, 2], old[:, 1])
    assert not torch.equal(new[:, 2], old[:, 2])
    assert report.mapped == ("road", "building")
    assert report.new == ("water",)
    assert report.dropped == ()
    assert "new water" in report.describe("version v1")


def test_a_class_only_the_prior_knows_is_dropped_and_said() -> None:
    prior = manifest(["building", "road"])
    target = starting_manifest(prior, manifest(["building"], version="v2"))
    _, report = adapt_prior(prior, trained_like(prior).state_dict(), target, fresh_for(target))
    assert report.dropped == ("road",)


def test_another_band_count_adapts_the_first_convolution() -> None:
    prior = manifest(["building"], bands=3)
    network = trained_like(prior)
    draft = manifest(["building"], bands=4, version="v2")
    target = starting_manifest(prior, draft)
    assert target.input == draft.input  # other bands: the project's own normalisation
    state, report = adapt_prior(prior, network.state_dict(), target, fresh_for(target))
    old = network.state_dict()["encoder.conv1.weight"]
    new = state["encoder.conv1.weight"]
    assert new.shape == (old.shape[0], 4, *old.shape[2:])
    for band, source in enumerate([0, 1, 2, 0]):
        assert torch.allclose(new[:, band], old[:, source] * 3 / 4)
    assert "adapted to 4" in report.bands
    build_model(target).load_state_dict(state)  # it fits the 4-band network


def test_a_single_band_kernel_sums_the_prior_kernels() -> None:
    weight = torch.randn(8, 3, 7, 7)
    single, _ = adapt_first_conv(weight, 1)
    assert torch.allclose(single[:, 0], weight.sum(dim=1))  # timm's rule for one band
    two, _ = adapt_first_conv(weight, 2)
    assert torch.allclose(two, weight[:, :2] * 3 / 2)


def test_a_prior_of_another_architecture_is_refused_with_the_difference() -> None:
    prior = manifest(["building"], encoder_depth=5, decoder_channels=[128, 64, 32, 16, 8])
    target = manifest(["building"], version="v2")
    with pytest.raises(TrainerError, match="encoder_depth 5"):
        adapt_prior(prior, trained_like(prior).state_dict(), target, fresh_for(target))
    # through starting_manifest the new version takes the prior's architecture instead
    started = starting_manifest(prior, target)
    state, _ = adapt_prior(prior, trained_like(prior).state_dict(), started, fresh_for(started))
    build_model(started).load_state_dict(state)


def test_torchvision_encoder_weights_load_into_the_unet_encoder(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18()
    file = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), file)
    network = build_model(manifest(["building"]))
    described = load_encoder_weights(network, file)
    assert torch.equal(network.encoder.conv1.weight, resnet.conv1.weight)
    assert torch.equal(network.encoder.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    assert "2 left out" in described  # fc.weight, fc.bias


def test_wrapped_prefixed_weights_and_four_bands_load_too(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18()
    file = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}, "epoch": 90}, file)
    network = build_model(manifest(["building"], bands=4))
    load_encoder_weights(network, file)
    assert torch.allclose(network.encoder.conv1.weight[:, 3], resnet.conv1.weight[:, 0] * 3 / 4)
    assert torch.equal(network.encoder.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)


def test_a_mismatched_encoder_file_fails_naming_the_keys(tmp_path: Path) -> None:
    bigger = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), bigger)
    network = build_model(manifest(["building"]))
    before = network.encoder.conv1.weight.clone()
    with pytest.raises(TrainerError, match=r"unexpected keys layer1\.2\.bn1\.bias") as raised:
        load_encoder_weights(network, bigger)
    assert "missing keys none" in str(raised.value)
    assert torch.equal(network.encoder.conv1.weight, before)  # nothing half-loaded
    partial = tmp_path / "partial.pth"
    state = torchvision.models.resnet18().state_dict()
    del state["bn1.weight"], state["layer2.0.downsample.0.weight"]
    torch.save(state, partial)
    with pytest.raises(TrainerError, match=r"missing keys bn1\.weight, layer2\.0\.downsample\.0\.weight"):
        load_encoder_weights(network, partial)
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not weights")
    with pytest.raises(TrainerError, match="cannot read"):
        load_encoder_weights(network, garbage)
    with pytest.raises(TrainerError, match="does not exist"):
        load_encoder_weights(network, tmp_path / "absent.pth")


def project_config(tmp_path: Path, name: str) -> Config:
    return Config(project={"name": name}, classes=CLASSES, paths={"data_dir": str(tmp_path / "data")},
                  base_dir=tmp_path)  # type: ignore[arg-type]  # fmt: skip


def saved(config: Config, version: str, names: list[str], activate: bool = False) -> ModelManifest:
    prior = manifest(names, version=version)
    store = ModelStore(config.models_dir)
    store.save(prior, trained_like(prior).state_dict())
    if activate:
        store.activate(version)
    return prior


def test_a_prior_is_found_by_version_project_or_path_and_an_unknown_one_lists_what_exists(
    tmp_path: Path,
) -> None:
    here, other = project_config(tmp_path, "city"), project_config(tmp_path, "coast")
    saved(here, "v20261101-000000", ["building"])
    saved(other, "v20261102-000000", ["building", "water"], activate=True)
    assert resolve_prior(here, "v20261101-000000").source == "version v20261101-000000"
    by_project = resolve_prior(here, "coast")
    assert by_project.manifest.version == "v20261102-000000"
    assert "coast" in by_project.source
    folder = other.models_dir / "v20261102-000000"
    assert resolve_prior(here, str(folder)).manifest.classes == by_project.manifest.classes
    assert resolve_prior(here, str(folder / "weights.pt")).state.keys() == by_project.state.keys()
    with pytest.raises(TrainerError, match="latest: v20261101-000000"):
        resolve_prior(here, "v1999")
    lonely = tmp_path / "lonely.pt"
    torch.save(by_project.state, lonely)
    with pytest.raises(TrainerError, match=r"no manifest\.json beside it"):
        resolve_prior(here, str(lonely))


def test_an_unknown_prior_stops_the_round_before_it_starts(tmp_path: Path) -> None:
    config = project_config(tmp_path, "city")
    dead = LabelStudioClient("http://127.0.0.1:9", "token")  # never called: the prior is checked first
    with pytest.raises(TrainerError, match="no such file, model version or project"):
        run_round(config, dead, start=Start(init_from="v-typo"))
    assert not config.registry_path.exists()  # no round recorded, nothing created


def test_train_init_from_goes_with_now_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--schedule", "--init-from", "v1"])
    assert result.exit_code == 2
    assert "--init-from goes with --now" in result.output


def test_a_prior_that_training_made_worse_on_validation_is_kept_as_it_started() -> None:
    prior = manifest(["building"])
    network = trained_like(prior)
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    image = torch.randn(3, 64, 64)
    answer = outputs(network, image[None])[0].argmax(dim=0).numpy().astype("uint8")  # the prior is right
    validation = [Sample(image.numpy(), answer)]
    names = ["background", "building"]
    with torch.no_grad():  # "training" moved the weights
        network.segmentation_head[0].bias.add_(torch.tensor([5.0, -5.0]))
    started = prior.model_copy(update={"origin": "from version v0"})
    metrics, kept = prior_if_better(network, initial, validation, started, {"miou": 0.25}, names, 7)
    assert metrics["miou"] == 1.0
    assert all(torch.equal(v, initial[k]) for k, v in network.state_dict().items())
    assert kept.origin == (
        "from version v0; kept as it started: trained on 7 tiles it scored mIoU 0.250 on validation, "
        "below its 1.000 before training"
    )
    moved = {k: v.clone() for k, v in trained_like(prior, seed=5).state_dict().items()}
    network.load_state_dict(moved)
    metrics, kept = prior_if_better(network, initial, validation, started, {"miou": 1.0}, names, 7)
    assert metrics == {"miou": 1.0}
    assert kept is started  # as good as the prior: the trained weights stay
    assert all(torch.equal(v, moved[k]) for k, v in network.state_dict().items())
