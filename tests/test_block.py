"""topk_decay (paper Eq. 2) against hand-computed cases, and the block's options."""

import math

import pytest
import torch

from crawd import CrossAttentionBlock, topk_decay
from crawd.block import prefix_topk_mask, topk_mask


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_decays_top_share_of_one_slice():
    beta = t([[0.1, 0.9], [0.6, 0.4]])  # N = 4, top_k 0.5 -> k = 2 -> tau = 0.6
    out = topk_decay(beta, torch.ones(2, 2, dtype=torch.bool), top_k=0.5, decay=0.2)
    assert torch.allclose(out, t([[0.1, 0.18], [0.12, 0.4]]))


def test_ceil_of_share():
    beta = t([[0.5, 0.3, 0.2]])  # N = 3, 0.4 * 3 = 1.2 -> k = 2 -> tau = 0.3
    out = topk_decay(beta, torch.ones(1, 3, dtype=torch.bool), top_k=0.4, decay=0.5)
    assert torch.allclose(out, t([[0.25, 0.15, 0.2]]))


def test_exact_product_is_not_rounded_up():
    beta = torch.arange(10, dtype=torch.float64).view(1, 10) / 10  # 0.7 * 10 is 7.000000000000001 in floats
    out = topk_decay(beta, torch.ones(1, 10, dtype=torch.bool), top_k=0.7, decay=0.0)
    assert (out == 0).sum() == 7 + 1  # the 7 largest decayed to 0, plus the entry that was 0 already
    assert out[0, 2] == 0.2 and out[0, 3] == 0


def test_ties_at_cut_off_are_all_decayed():
    beta = t([[0.4, 0.4, 0.2]])  # k = ceil(0.34 * 3) = 2, tau = 0.4; both 0.4 entries decay
    assert torch.allclose(topk_decay(beta, torch.ones(1, 3, dtype=torch.bool), 0.34, 0.5), t([[0.2, 0.2, 0.2]]))
    beta = t([[0.4, 0.4, 0.2]])  # k = ceil(0.2 * 3) = 1, tau = 0.4; the tie still decays both
    assert torch.allclose(topk_decay(beta, torch.ones(1, 3, dtype=torch.bool), 0.2, 0.5), t([[0.2, 0.2, 0.2]]))


def test_padding_is_neither_counted_nor_changed():
    beta = t([[0.9, 0.1], [0.99, 0.01]])  # second row is padding: N = 2, k = ceil(0.5 * 2) = 1, tau = 0.9
    valid = torch.tensor([[True], [False]])
    out = topk_decay(beta, valid, top_k=0.5, decay=0.1)
    assert torch.allclose(out, t([[0.09, 0.1], [0.99, 0.01]]))


def test_per_leading_index_cut_offs():
    beta = t([[[0.7, 0.3]], [[0.2, 0.8]]])  # two slices (e.g. two heads), each its own tau
    out = topk_decay(beta, torch.ones(1, 1, 2, dtype=torch.bool), top_k=0.5, decay=0.0)
    assert torch.allclose(out, t([[[0.0, 0.3]], [[0.2, 0.0]]]))


def test_identity_cases():
    beta = torch.rand(2, 3, 4, 5)
    valid = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    assert topk_decay(beta, valid, top_k=0.0, decay=0.2) is beta
    assert topk_decay(beta, valid, top_k=0.4, decay=1.0) is beta


def test_one_valid_entry_is_decayed():
    beta = t([[0.3, 0.7]])
    valid = torch.tensor([[False, True]])
    assert torch.allclose(topk_decay(beta, valid, top_k=0.01, decay=0.5), t([[0.3, 0.35]]))


def test_no_valid_entry_changes_nothing():
    beta = t([[0.3, 0.7]])
    assert torch.equal(topk_decay(beta, torch.zeros(1, 2, dtype=torch.bool), 0.4, 0.2), beta)


def test_top_k_one_decays_every_valid_entry():
    beta = torch.rand(3, 4)
    assert torch.allclose(topk_decay(beta, torch.ones(3, 4, dtype=torch.bool), 1.0, 0.2), beta * 0.2)


def test_gradient_flows_through_kept_and_decayed_values():
    beta = t([[0.1, 0.9]]).requires_grad_()
    topk_decay(beta, torch.ones(1, 2, dtype=torch.bool), 0.5, 0.25).sum().backward()
    assert torch.allclose(beta.grad, t([[1.0, 0.25]]))


def make_block(**kw):
    torch.manual_seed(0)
    args = dict(hidden_size=8, num_heads=2, dropout=0.0, ffn_dim=None, top_k=0.5, decay=0.2)
    return CrossAttentionBlock(**{**args, **kw}).eval()


def test_attention_weights_match_hand_formula():
    block = make_block()
    h_x, h_b = torch.randn(1, 3, 8), torch.randn(1, 2, 8)
    beta = block.attention_weights(h_x, h_b, torch.ones(1, 2, dtype=torch.bool))
    q = block.q_proj(h_x).view(1, 3, 2, 4).transpose(1, 2)
    k = block.k_proj(h_b).view(1, 2, 2, 4).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    assert beta.shape == (1, 2, 3, 2)
    assert torch.allclose(beta, expected, atol=1e-6)


def test_row_scope_cuts_each_row_separately():
    block = make_block(topk_scope="row", top_k=0.5, decay=0.0)
    beta = torch.tensor([[[[0.9, 0.1], [0.4, 0.6]]]])
    out = block.decayed(beta, torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.1], [0.4, 0.0]]]]))


def test_renormalise_option():
    block = make_block(renormalize=True, top_k=0.5, decay=0.5)
    beta = torch.tensor([[[[0.8, 0.2]]]])
    out = block.decayed(beta, torch.ones(1, 1, 1, 2, dtype=torch.bool))
    assert torch.allclose(out, torch.tensor([[[[0.4 / 0.6, 0.2 / 0.6]]]]))


def test_decay_off_at_inference_option():
    beta = torch.tensor([[[[0.8, 0.2]]]])
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    assert torch.equal(make_block(decay_at_inference=False).decayed(beta, valid), beta)
    assert not torch.equal(make_block(decay_at_inference=True).decayed(beta, valid), beta)
    assert not torch.equal(make_block(decay_at_inference=False).train().decayed(beta, valid), beta)


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        make_block(num_heads=3)


def test_prefix_cutoff_hand_case():
    # one head, n = 3, m = 2, top_k 0.5, decay 0.5; row i's cut-off covers rows <= i
    beta = t([[0.6, 0.4],    # rows <= 0: N 2, k 1, tau 0.6   -> 0.6 decays
              [0.1, 0.9],    # rows <= 1: N 4, k 2, tau 0.6   -> 0.9 decays, 0.1 stays
              [0.7, 0.3]])   # rows <= 2: N 6, k 3, tau 0.6   -> 0.7 decays
    out = torch.where(prefix_topk_mask(beta, torch.ones(3, 2, dtype=torch.bool), 0.5), beta * 0.5, beta)
    assert torch.allclose(out, t([[0.3, 0.4], [0.1, 0.45], [0.35, 0.3]]))
    # the per-example cut-off over the whole example (tau 0.6) would also decay row 0's 0.6,
    # but with a smaller first row it differs: row 0 alone always decays its largest entry
    beta = t([[0.2, 0.15], [0.9, 0.8], [0.7, 0.6]])
    prefix = prefix_topk_mask(beta, torch.ones(3, 2, dtype=torch.bool), 0.5)
    whole = topk_mask(beta, torch.ones(3, 2, dtype=torch.bool), 0.5)
    assert prefix[0].tolist() == [True, False] and whole[0].tolist() == [False, False]
    assert torch.equal(prefix[-1], whole[-1])


@pytest.mark.parametrize("top_k", [0.0, 0.1, 0.4, 0.5, 1.0])
def test_prefix_cutoff_equals_per_example_cutoff_of_each_prefix(top_k):
    gen = torch.Generator().manual_seed(0)
    beta = (torch.rand(3, 4, 9, 3, generator=gen) * 4).round() / 4  # many ties
    valid = (torch.rand(3, 1, 9, 1, generator=gen) > 0.2) & (torch.rand(3, 1, 1, 3, generator=gen) > 0.1)
    got = prefix_topk_mask(beta, valid, top_k)
    for i in range(9):
        assert torch.equal(got[..., i, :], topk_mask(beta[..., :i + 1, :], valid[..., :i + 1, :], top_k)[..., i, :])


def test_causal_block_rows_do_not_depend_on_later_rows():
    torch.manual_seed(0)
    block = CrossAttentionBlock(8, 2, 0.0, None, top_k=0.4, decay=0.2, causal=True).eval()
    h_b, b_mask = torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
    h_x = torch.randn(1, 6, 8)
    other = torch.cat([h_x[:, :3], 5 * torch.randn(1, 3, 8)], dim=1)
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        a, b = block(h_x, h_b, mask, b_mask)[0], block(other, h_b, mask, b_mask)[0]
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.equal(a[:, 3:], b[:, 3:])
