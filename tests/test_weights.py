import pytest

from sslseg.errors import ConfigError, DataError
from sslseg.nn.unet import build_encoder, build_unet
from sslseg.weights import load_encoder, read_metadata, save_encoder


def test_encoder_weights_transfer_exactly_into_the_unet(tmp_path):
    enc = build_encoder("resnet18", in_channels=1)
    path = save_encoder(enc, tmp_path / "encoder.safetensors", {"encoder": "resnet18", "in_channels": 1})
    unet = build_unet("resnet18", 1, 2)
    meta = load_encoder(unet.encoder, path, "resnet18", 1)
    assert meta["encoder"] == "resnet18" and read_metadata(path)["in_channels"] == 1
    for k, v in enc.state_dict().items():
        assert (unet.encoder.state_dict()[k] == v).all()


def test_weights_for_another_encoder_are_refused(tmp_path):
    path = save_encoder(build_encoder("resnet18", 3), tmp_path / "e.safetensors", {"encoder": "resnet18"})
    with pytest.raises(ConfigError, match="weights are for encoder 'resnet18'.*resnet34"):
        load_encoder(build_encoder("resnet34", 3), path, "resnet34", 3)
    (tmp_path / "e.json").unlink()  # without a sidecar the key check still catches it
    with pytest.raises(ConfigError, match="do not fit"):
        load_encoder(build_encoder("resnet34", 3), path)


def test_truncated_weights_file_is_reported(tmp_path):
    path = save_encoder(build_encoder("resnet18", 3), tmp_path / "e.safetensors", {})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_encoder(build_encoder("resnet18", 3), path)


def test_unknown_encoder_lists_choices():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet19'.*resnet18"):
        build_unet("resnet19", 3, 2)
