"""Muon: the orthogonalised update, the groups it takes, a loss that falls, and a state that resumes exactly."""

from __future__ import annotations

import copy

import torch

from autarky.model import Llama, ModelConfig
from autarky.train import TrainConfig
from autarky.train.muon import Muon, make_optimizer, muon_groups, orthogonalise


def tiny() -> Llama:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    return Llama(config)


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    start = torch.randint(0, 32, (8, 1), generator=g)
    return (start + torch.arange(17)) % 64  # counting sequences: learnable in a few steps


def train(model: Llama, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        ids = batch(step)
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_orthogonalise_gives_singular_values_near_one_for_wide_and_tall():
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((16, 48), (48, 16)):
            g = torch.randn(*shape) * 3
            update = orthogonalise(g, dtype=dtype)
            assert update.dtype == torch.float32  # computed in dtype, returned in the gradient's
            s = torch.linalg.svdvals(update)
            assert s.min() > 0.5 and s.max() < 1.25  # the quintic trades exactness for speed


def test_every_matrix_decays_at_its_own_rate_and_norms_do_not():
    """With zero gradients the update is nothing but the decay: Muon's matrices shrink by
    lr * lr_scale * weight_decay, the embedding by lr * weight_decay, the norms not at all."""
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = Muon(muon_groups(model, 0.1, 10.0), lr=3e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if p.dim() < 2:
            factor = 1.0
        elif "embed" in name:
            factor = 1 - 3e-3 * 0.1
        else:
            factor = 1 - 3e-3 * 10.0 * 0.1
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_the_iteration_computes_in_bf16_when_the_run_does():
    model = tiny()
    assert make_optimizer(model, TrainConfig(precision="bf16")).ns_dtype == torch.bfloat16
    assert make_optimizer(model, TrainConfig(precision="fp32")).ns_dtype is None  # fp32 on a CPU


def test_groups_put_hidden_matrices_on_muon_and_the_rest_on_adamw():
    model = tiny()
    muon, embeddings, flat = muon_groups(model, 0.1, 10.0)
    assert muon["muon"] and all(p.dim() == 2 for p in muon["params"])
    assert muon["weight_decay"] == embeddings["weight_decay"] == 0.1 and flat["weight_decay"] == 0.0
    assert model.model.embed_tokens.weight in embeddings["params"] and not embeddings.get("muon")
    assert all(p.dim() == 1 for p in flat["params"])
    total = sum(len(g["params"]) for g in (muon, embeddings, flat))
    assert total == len({id(p) for p in model.parameters()})


def test_loss_falls_and_a_reloaded_state_continues_exactly():
    model = tiny()
    optimizer = Muon(muon_groups(model, 0.0, 10.0), lr=3e-3)
    losses = train(model, optimizer, range(30))
    assert losses[-1] < 0.6 * losses[0]
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_state = copy.deepcopy(optimizer.state_dict())  # state_dict holds the live tensors
    ahead = train(model, optimizer, range(30, 35))
    again = tiny()
    again.load_state_dict(saved_model)
    resumed = Muon(muon_groups(again, 0.0, 10.0), lr=3e-3)
    resumed.load_state_dict(saved_state)
    assert train(again, resumed, range(30, 35)) == ahead


def test_a_stack_of_matrices_is_orthogonalised_each_as_alone():
    """The optimizer orthogonalises equal-shaped matrices (a mixture's experts) in one batch."""
    g = torch.randn(5, 24, 40, generator=torch.Generator().manual_seed(3))
    stacked = orthogonalise(g)
    for i in range(5):
        torch.testing.assert_close(stacked[i], orthogonalise(g[i]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(orthogonalise(g.mT), stacked.mT, rtol=1e-4, atol=1e-5)
