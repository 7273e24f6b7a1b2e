"""Unit tests of the White Box modules (LIN, KLA, PG) and the K-L prototype loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lore.losses import kp_loss
from lore.whitebox import KLA, LIN, PromptGenerator, knn_indices, max_relative, topn_filter


def ref_lin(dim: int, **options) -> LIN:
    """LIN in the reference code's form (ViG block, k = 9, BatchNorm); ``options`` override it."""
    return LIN(dim, **{"k": 9, "blocks": 1, "variant": "vig", "norm": "batch", **options})


def ref_kla(dim: int, knowledge_dim: int, **options) -> KLA:
    """KLA in the reference code's form (top-9, zero fill); ``options`` override it."""
    return KLA(dim, knowledge_dim, **{"topn": 9, "variant": "code", **options})


def ref_pg(dim: int, depth: int, **options) -> PromptGenerator:
    """The Prompt Generator in the reference code's form (n = 2, r = 32, dropout 0.1, BatchNorm)."""
    return PromptGenerator(dim, depth, **{"num_prompts": 2, "bottleneck": 32, "dropout": 0.1, "norm": "batch",
                                          **options})


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_all_params_get_grad(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


# --------------------------------------------------------------------------------------- LIN

@pytest.mark.parametrize("batch", [1, 2, 5])
def test_knn_indices_equals_brute_force_cosine(batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 20, 8, generator=g)
    k = 5
    idx = knn_indices(x, k)
    assert idx.shape == (batch, 20, k) and idx.dtype == torch.long
    for b in range(batch):  # brute force, one image and one token at a time
        for i in range(20):
            cos = [F.cosine_similarity(x[b, i], x[b, j], dim=0).item() for j in range(20)]
            expected = sorted(range(20), key=lambda j: -cos[j])[:k]
            assert idx[b, i].tolist() == expected
    assert (idx[..., 0] == torch.arange(20)).all()  # each token is its own nearest neighbour


def test_knn_uses_cosine_not_raw_distance() -> None:
    # Token 1 is far from token 0 in L2 but points the same way: cosine makes it the neighbour.
    x = torch.tensor([[[1.0, 0.0], [10.0, 0.0], [0.9, 0.9]]])
    assert knn_indices(x, 2)[0, 0].tolist() == [0, 1]
    with pytest.raises(ValueError):
        knn_indices(x, 4)


def test_max_relative_matches_definition() -> None:
    x = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [1.0, 5.0]]])  # (1, 3, 2)
    idx = torch.tensor([[[0, 1], [1, 2], [2, 0]]])
    # token 0: max(x0 - x0, x1 - x0) = max([0, 0], [2, -2]) = [2, 0]
    # token 1: max(x1 - x1, x2 - x1) = max([0, 0], [-1, 6]) = [0, 6]
    # token 2: max(x2 - x2, x0 - x2) = max([0, 0], [-1, -4]) = [0, 0]
    expected = torch.tensor([[[2.0, 0.0], [0.0, 6.0], [0.0, 0.0]]])
    assert torch.equal(max_relative(x, idx), expected)
    # k = 1 means only the token itself: no relative information
    assert torch.equal(max_relative(x, knn_indices(x, 1)), torch.zeros_like(x))


@pytest.mark.parametrize("variant", ["vig", "paper"])
def test_lin_shapes(variant: str) -> None:
    lin = ref_lin(16, k=4, blocks=2, variant=variant)
    assert lin(torch.randn(2, 3, 4, 16)).shape == (2, 3, 4, 16)
    assert lin(torch.randn(2, 12, 16)).shape == (2, 12, 16)
    assert lin(torch.randn(2, 3, 16)).shape == (2, 3, 16)  # k clamped to the 3 tokens
    with pytest.raises(ValueError):
        lin(torch.randn(2, 12, 15))


def test_lin_default_parameter_count_d768() -> None:
    lin = ref_lin(768)
    assert n_params(lin) == 7_098_624
    block = lin.blocks[0]
    assert n_params(block.grapher.fc1) == 592_128
    assert n_params(block.grapher.graph_conv) == 594_432
    assert n_params(block.grapher.fc2) == 1_181_952
    assert n_params(block.ffn.fc1) == 2_368_512
    assert n_params(block.ffn.fc2) == 2_361_600
    assert block.grapher.graph_conv[0].groups == 4


@pytest.mark.parametrize("variant", ["vig", "paper"])
def test_lin_init_kaiming_zero_bias(variant: str) -> None:
    torch.manual_seed(0)
    lin = ref_lin(64, variant=variant)
    for m in lin.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            fan_in = m.weight[0].numel()
            assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)


@pytest.mark.parametrize("variant", ["vig", "paper"])
def test_lin_is_permutation_equivariant(variant: str) -> None:
    # The graph depends on feature similarity only, never on token position.
    torch.manual_seed(0)
    lin = ref_lin(16, k=4, variant=variant).eval()
    x = torch.randn(2, 12, 16)
    perm = torch.randperm(12)
    with torch.no_grad():
        assert torch.allclose(lin(x[:, perm]), lin(x)[:, perm], atol=1e-5)


@pytest.mark.parametrize("variant", ["vig", "paper"])
def test_lin_token_output_depends_only_on_its_neighbours(variant: str) -> None:
    # One block: token 0's output changes when one of its kNN neighbours changes, not otherwise.
    torch.manual_seed(0)
    lin = ref_lin(8, k=3, variant=variant).eval()
    x = torch.randn(1, 10, 8)
    with torch.no_grad():
        graph_in = lin.blocks[0].grapher.fc1(x.transpose(1, 2)).transpose(1, 2) if variant == "vig" else x
        neighbours = knn_indices(graph_in, 3)[0, 0].tolist()
        outsider = next(j for j in range(10) if j not in neighbours)
        for j, should_change in ((neighbours[1], True), (outsider, False)):
            y = x.clone()
            y[0, j] += 1e-2 * torch.randn(8)
            change = (lin(y)[0, 0] - lin(x)[0, 0]).abs().max().item()
            assert (change > 1e-4) if should_change else (change < 1e-6), (j, change)


@pytest.mark.parametrize("variant", ["vig", "paper"])
def test_lin_gradients(variant: str) -> None:
    torch.manual_seed(0)
    lin = ref_lin(16, k=4, blocks=2, variant=variant)
    e0 = torch.randn(3, 4, 4, 16)  # frozen patch embedding: no grad
    (lin(e0) * torch.randn(3, 4, 4, 16)).sum().backward()
    assert_all_params_get_grad(lin)
    assert e0.grad is None


def test_lin_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        ref_lin(16, variant="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ref_lin(5, groups=4)  # 2 * 5 = 10 channels do not split into 4 groups
    with pytest.raises(ValueError):
        ref_lin(16, k=0)


# --------------------------------------------------------------------------------------- KLA

def test_topn_filter_keeps_exactly_n() -> None:
    s = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [-1.0, -5.0, -3.0, -2.0, -4.0]])
    assert torch.equal(topn_filter(s, 2, 0.0), torch.tensor([[0.0, 5.0, 0.0, 0.0, 4.0], [-1.0, 0.0, 0.0, -2.0, 0.0]]))
    out = topn_filter(s, 3, float("-inf"))
    assert (torch.isfinite(out).sum(dim=-1) == 3).all()
    assert torch.equal(topn_filter(s, 9, 0.0), s)  # n clamped to the row length


def _kla_with_known_scores(variant: str) -> tuple[KLA, torch.Tensor, torch.Tensor]:
    """4 patches on a 2x2 grid, W_k = I, tokens i * e_i, query (1, 1, 1, 1): Q K^T = [1, 2, 3, 4]."""
    kla = ref_kla(4, 4, topn=2, variant=variant).eval()
    with torch.no_grad():
        kla.w_k.weight.copy_(torch.eye(4))
    e_hat = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))[None]  # (1, 4, 4)
    return kla, e_hat, torch.ones(1, 4)


def test_kla_code_topn_zero_fill_and_rescale() -> None:
    kla, e_hat, q = _kla_with_known_scores("code")
    attn = kla.attention(e_hat, q)
    # S = [1, 2, 3, 4] * sqrt(2); keep top 2 -> [0, 0, 3, 4] * sqrt(2); L2 norm -> 4 patches:
    # [0, 0, 0.6, 0.8] * 4 = [0, 0, 2.4, 3.2]; dropped entries keep weight exp(0) / Z.
    z = 2 + math.exp(2.4) + math.exp(3.2)
    expected = torch.tensor([[[1 / z, 1 / z, math.exp(2.4) / z, math.exp(3.2) / z]]])
    assert torch.allclose(attn, expected, atol=1e-6)
    # the rescaling removes the sqrt(h) factor: any grid height gives the same weights
    assert torch.allclose(kla.attention(e_hat, q, grid_h=1), attn, atol=1e-6)


def test_kla_paper_topn_minus_inf() -> None:
    kla, e_hat, q = _kla_with_known_scores("paper")
    attn = kla.attention(e_hat, q)
    # S = [1, 2, 3, 4] / sqrt(4) = [0.5, 1, 1.5, 2]; top 2 kept, the rest -inf -> weight 0.
    w = 1 / (1 + math.exp(0.5))
    assert torch.allclose(attn, torch.tensor([[[0.0, 0.0, w, 1 - w]]]), atol=1e-6)


def test_kla_code_needs_grid_height_for_non_square() -> None:
    kla = ref_kla(8, 6)
    e_hat, q = torch.randn(2, 6, 8), torch.randn(3, 6)
    with pytest.raises(ValueError):
        kla(e_hat, q)
    protos, attn = kla(e_hat, q, grid_h=2)
    assert protos.shape == (2, 3, 8) and attn.shape == (2, 3, 6)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_kla_shapes(variant: str) -> None:
    kla = ref_kla(16, 8, topn=3, variant=variant)
    e_hat = torch.randn(2, 9, 16)
    protos, attn = kla(e_hat, torch.randn(5, 8))
    assert protos.shape == (2, 5, 16) and attn.shape == (2, 5, 9)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 5))
    protos, attn = kla.forward_rows(e_hat, torch.randn(2, 2, 8))
    assert protos.shape == (2, 2, 16) and attn.shape == (2, 2, 9)
    if variant == "paper":
        assert ((attn > 0).sum(-1) == 3).all()
    with pytest.raises(ValueError):
        kla.forward_rows(e_hat, torch.randn(5, 8))


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_kla_forward_rows_equals_all_classes(variant: str) -> None:
    torch.manual_seed(0)
    kla = ref_kla(16, 8, topn=3, variant=variant)
    if variant == "paper":
        kla.eval()  # train-mode BatchNorm statistics depend on which rows are in the batch
    b, c = 4, 7
    e_hat, knowledge = torch.randn(b, 16, 16), F.normalize(torch.randn(c, 8), dim=-1)
    t, p = torch.tensor([0, 3, 6, 2]), torch.tensor([5, 3, 1, 0])
    rows = torch.stack((t, p), dim=1)  # (B, 2)
    protos_all, attn_all = kla(e_hat, knowledge)
    protos, attn = kla.forward_rows(e_hat, knowledge[rows])
    batch = torch.arange(b)[:, None]
    assert torch.allclose(protos, protos_all[batch, rows], atol=1e-6)
    assert torch.allclose(attn, attn_all[batch, rows], atol=1e-6)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_kla_gradients(variant: str) -> None:
    torch.manual_seed(0)
    kla = ref_kla(16, 8, topn=3, variant=variant)
    e_hat = torch.randn(3, 9, 16, requires_grad=True)
    knowledge = torch.randn(5, 8)  # frozen text embeddings
    protos, _ = kla.forward_rows(e_hat, knowledge[torch.tensor([[0, 1], [2, 3], [4, 0]])])
    (protos * torch.randn_like(protos)).sum().backward()
    assert_all_params_get_grad(kla)
    assert knowledge.grad is None
    assert e_hat.grad is not None and e_hat.grad.abs().sum() > 0  # reaches LIN in the full model


# ---------------------------------------------------------------------------------------- PG

def test_pg_shapes() -> None:
    pg = ref_pg(16, depth=3, num_prompts=2, bottleneck=4)
    y, u = pg(torch.randn(5, 9, 16))
    assert y.shape == (5, 16) and u.shape == (5, 3, 2, 16)
    y, u = pg(torch.randn(5, 3, 3, 16))
    assert y.shape == (5, 16) and u.shape == (5, 3, 2, 16)


def test_pg_parameter_count_d768() -> None:
    assert n_params(ref_pg(768, depth=12, num_prompts=2, bottleneck=32)) == 719_808


def test_pg_init_and_pooling() -> None:
    torch.manual_seed(0)
    pg = ref_pg(16, depth=2, bottleneck=4).eval()
    for m in pg.modules():
        if isinstance(m, nn.Linear):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # Y depends on the tokens only through their mean: a token permutation changes nothing
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        y1, u1 = pg(x)
        y2, u2 = pg(x[:, torch.randperm(9)])
    assert torch.allclose(y1, y2, atol=1e-5) and torch.allclose(u1, u2, atol=1e-5)


def test_pg_gradients() -> None:
    torch.manual_seed(0)
    pg = ref_pg(16, depth=3, bottleneck=4)
    e_hat = torch.randn(4, 9, 16)  # frozen input: no grad
    y, u = pg(e_hat)
    ((y * torch.randn_like(y)).sum() + (u * torch.randn_like(u)).sum()).backward()
    assert_all_params_get_grad(pg)
    assert e_hat.grad is None


# -------------------------------------------------------------------------------------- loss

def test_kp_loss_hand_numbers() -> None:
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a_p = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    t = torch.tensor([0, 1])
    # sample 0: -cos = -1, cos(y, a_p) = 0; sample 1: -1/sqrt2 + 1/sqrt2 = 0 -> mean -0.5
    assert kp_loss(y, a_t, a_p, t, torch.tensor([2, 3])).item() == pytest.approx(-0.5)
    # p == t for sample 1: its negative term is dropped -> (-1 - 1/sqrt2) / 2
    assert kp_loss(y, a_t, a_p, t, torch.tensor([2, 1])).item() == pytest.approx((-1 - 1 / math.sqrt(2)) / 2)
    # no negative term at all
    assert kp_loss(y, a_t, None, t, None).item() == pytest.approx((-1 - 1 / math.sqrt(2)) / 2)
    with pytest.raises(ValueError):
        kp_loss(y, a_t, a_p, t, None)


def test_kp_loss_moving_y_toward_true_prototype_lowers_it() -> None:
    torch.manual_seed(0)
    y0, a_t, a_p = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    t, p = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])
    losses = [kp_loss(y0 + s * (a_t - y0), a_t, None, t, None).item() for s in (0.0, 0.3, 0.6, 0.9)]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert kp_loss(a_t, a_t, None, t, None).item() == pytest.approx(-1.0)
    # gradient signs: a descent step on Y moves it toward A_t and, where t != p, away from A_p
    y = y0.clone().requires_grad_(True)
    kp_loss(y, a_t, a_p, t, p).backward()
    y1 = y0 - 0.1 * y.grad
    assert (F.cosine_similarity(y1, a_t) > F.cosine_similarity(y0, a_t))[p == t].all()
    assert (F.cosine_similarity(y1, a_p) < F.cosine_similarity(y0, a_p))[p != t].all()
    assert kp_loss(y1, a_t, a_p, t, p) < kp_loss(y0, a_t, a_p, t, p)


def test_kp_loss_gradients_reach_prototypes() -> None:
    y = torch.randn(2, 4, requires_grad=True)
    a_t = torch.randn(2, 4, requires_grad=True)
    a_p = torch.randn(2, 4, requires_grad=True)
    kp_loss(y, a_t, a_p, torch.tensor([0, 1]), torch.tensor([0, 2])).backward()
    assert y.grad.abs().sum() > 0 and a_t.grad.abs().sum() > 0
    # sample 0 has t == p: no gradient into its wrong-class prototype
    assert torch.equal(a_p.grad[0], torch.zeros(4)) and a_p.grad[1].abs().sum() > 0
