"""One generic set of checks run over every architecture, plus the exact reference sizes."""

import pytest
import torch

from signglove_exp.models import ARCHITECTURES, GRU, build_model, count_parameters, last_step

REFERENCE_PARAMS = {"gru": 25_624, "stacked_gru": 50_584, "ms3d_gru": 58_840, "ms3d_stacked_gru": 167_032}
# the module whose output sequence the head reads, and that sequence's time pooling factor
RECURRENT = {
    "gru": ("RNN", 1),
    "stacked_gru": ("RNN", 1),
    "ms3d_gru": ("gru", 2),
    "ms3d_stacked_gru": ("gru2", 1),
}


def test_every_architecture_has_a_reference_size():
    assert set(ARCHITECTURES) == set(REFERENCE_PARAMS)


@pytest.mark.parametrize("name", REFERENCE_PARAMS)
def test_trainable_parameters_match_upstream(name):
    assert count_parameters(build_model(name)) == REFERENCE_PARAMS[name]


def test_legacy_gru_with_input_projection_matches_upstream_checkpoint_size():
    assert count_parameters(GRU(input_projection=128)) == 49_816


@pytest.mark.parametrize("name", REFERENCE_PARAMS)
def test_head_reads_the_last_real_step(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    lengths = torch.tensor([87, 80, 59, 20, 2, 1])
    x = torch.randn(len(lengths), 87, 8)
    seen = {}
    attr, pool = RECURRENT[name]
    getattr(model, attr).register_forward_hook(lambda m, i, o: seen.__setitem__("seq", o[0]))
    model.output_layers.register_forward_hook(lambda m, i, o: seen.__setitem__("head_in", i[0]))
    logits = model(x, lengths)
    assert logits.shape == (len(lengths), 24)
    seq = seen["seq"]
    expected_idx = ((lengths - 1) // pool).clamp(max=seq.shape[1] - 1)
    assert torch.equal(seen["head_in"], seq[torch.arange(len(lengths)), expected_idx])


def test_pooled_index_is_clamped_and_halved():
    seq = torch.arange(43).float().view(1, 43, 1).expand(5, 43, 1)
    lengths = torch.tensor([87, 86, 80, 2, 1])
    assert last_step(seq, lengths, 2, "last_real").flatten().tolist() == [42, 42, 39, 0, 0]


def test_upstream_readout_reproduces_upstreams_indices():
    seq = torch.arange(87).float().view(1, 87, 1).expand(2, 87, 1)
    lengths = torch.tensor([80, 20])
    assert last_step(seq, lengths, 0, "upstream").flatten().tolist() == [86, 86]  # RNN models: index -1
    pooled = seq[:, :43]
    assert last_step(pooled, lengths, 2, "upstream").flatten().tolist() == [42, 19]  # MS3DGRU's clamp


@pytest.mark.parametrize("name", ["gru", "stacked_gru"])  # MS3D convolutions see neighbouring steps by design
def test_padding_after_the_last_real_step_cannot_change_rnn_only_models(name):
    model = build_model(name).eval()
    x, lengths = torch.randn(2, 87, 8), torch.tensor([50, 87])
    noisy = x.clone()
    noisy[0, 50:] = 100.0
    assert torch.allclose(model(x, lengths), model(noisy, lengths))


def test_channels_on_a_larger_grid_fill_empty_cells():
    model = build_model("ms3d_gru", n_channels=7, grid=(4, 2)).eval()
    assert model(torch.randn(3, 87, 7), torch.tensor([87, 40, 5])).shape == (3, 24)
    with pytest.raises(ValueError, match="do not fit"):
        build_model("ms3d_gru", n_channels=11, grid=(4, 2))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'lstm'"):
        build_model("lstm")
