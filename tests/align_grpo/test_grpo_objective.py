"""GRPO's advantages and objective against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.align.grpo import GRPOObjective, group_advantages, token_logprobs


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 0 -> mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # group 2: all equal -> 0 (nothing to prefer)
    adv = group_advantages([1, 0, 0, 0, 1, 1, 1, 1], group_size=4, eps=1e-9)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])
    adv = group_advantages([1, 0], group_size=2, eps=1e-4)  # std 0.7071
    assert adv.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4)])
    with pytest.raises(ValueError):
        group_advantages([1, 0, 1], group_size=2)


def two_token_batch():
    """Two completions of two tokens after a one-token prompt. Probabilities of the completion
    tokens: old policy 0.5 everywhere; new policy 0.7, 0.4 (row 0) and 0.3, 0.6 (row 1);
    reference 0.6, 0.5 and 0.5, 0.5. Advantages +1 and -1."""
    log = math.log
    batch = {
        "completion_mask": torch.tensor([[0, 1, 1], [0, 1, 1]]),
        "old_logprobs": torch.tensor([[log(0.5), log(0.5)], [log(0.5), log(0.5)]]),
        "ref_logprobs": torch.tensor([[log(0.6), log(0.5)], [log(0.5), log(0.5)]]),
        "advantages": torch.tensor([1.0, -1.0]),
        "rewards": torch.tensor([1.0, 0.0]),
    }
    logp = torch.tensor([[log(0.7), log(0.4)], [log(0.3), log(0.6)]], requires_grad=True)
    return batch, logp


# By hand, eps = 0.2, beta = 0.1:
# row 0 (A=+1): ratios 1.4, 0.8 -> clipped 1.2, 0.8 -> surrogate min(1.4, 1.2) = 1.2, 0.8
#   KL k3 = r - ln r - 1 with r = ref/new: 0.6/0.7 -> 0.0112935; 0.5/0.4 -> 0.0268564
#   token losses -(1.2 - 0.1 * 0.0112935) = -1.1988706, -(0.8 - 0.1 * 0.0268564) = -0.7973144
# row 1 (A=-1): ratios 0.6, 1.2 -> clipped 0.8, 1.2 -> surrogate min(-0.6, -0.8) = -0.8, -1.2
#   KL: 0.5/0.3 -> 0.1558410; 0.5/0.6 -> 0.0156549
#   token losses -(-0.8 - 0.0155841) = 0.8155841, -(-1.2 - 0.0015655) = 1.2015655
# clipped tokens: the first of each row (min took the clipped term): 2 of 4
TOKEN_LOSSES = [[-1.1988706, -0.7973144], [0.8155841, 1.2015655]]
KL = [[0.0112935, 0.0268564], [0.1558410, 0.0156549]]


def test_objective_by_hand_sequence_norm():
    batch, logp = two_token_batch()
    obj = GRPOObjective(clip_eps=0.2, kl_beta=0.1, loss_norm="sequence")
    assert obj.count(batch) == 2
    loss, stats = obj.loss_from_logprobs(logp, batch)
    # per-sequence means, summed (the loop divides by the count, 2)
    want = sum(sum(row) / 2 for row in TOKEN_LOSSES)
    assert float(loss) == pytest.approx(want, abs=1e-6)
    assert float(stats["kl"]) == pytest.approx(sum(sum(r) / 2 for r in KL), abs=1e-6)
    assert float(stats["clip_fraction"]) == pytest.approx(1.0)  # 1/2 + 1/2
    assert float(stats["reward"]) == pytest.approx(1.0)
    # the gradient: clipped tokens get none from the surrogate, only from the KL term;
    # d/dlogp of -(ratio * A) = -ratio * A for the unclipped ones, d/dlogp beta * k3 = beta * (1 - r)
    loss.backward()
    g = logp.grad
    assert float(g[0, 0]) == pytest.approx(0.5 * 0.1 * (1 - 0.6 / 0.7), abs=1e-6)
    assert float(g[0, 1]) == pytest.approx(0.5 * (-0.8 + 0.1 * (1 - 0.5 / 0.4)), abs=1e-6)
    assert float(g[1, 0]) == pytest.approx(0.5 * 0.1 * (1 - 0.5 / 0.3), abs=1e-6)
    assert float(g[1, 1]) == pytest.approx(0.5 * (1.2 + 0.1 * (1 - 0.5 / 0.6)), abs=1e-6)


def test_objective_token_norm_counts_tokens():
    batch, logp = two_token_batch()
    batch["completion_mask"] = torch.tensor([[0, 1, 1], [0, 1, 0]])  # row 1 has one token
    obj = GRPOObjective(clip_eps=0.2, kl_beta=0.1, loss_norm="token")
    assert obj.count(batch) == 3
    loss, stats = obj.loss_from_logprobs(logp, batch)
    assert float(loss) == pytest.approx(TOKEN_LOSSES[0][0] + TOKEN_LOSSES[0][1] + TOKEN_LOSSES[1][0], abs=1e-6)
    assert float(stats["kl"]) == pytest.approx(KL[0][0] + KL[0][1] + KL[1][0], abs=1e-6)
    seq = GRPOObjective(clip_eps=0.2, kl_beta=0.1, loss_norm="sequence")
    loss_s, _ = seq.loss_from_logprobs(logp, batch)
    assert float(loss_s) == pytest.approx(sum(TOKEN_LOSSES[0]) / 2 + TOKEN_LOSSES[1][0], abs=1e-6)


def test_ratio_one_gives_the_policy_gradient(random_target_dir):
    """On a real model with old = current log-probs, one SGD step on the objective raises the
    log-probability of the completion with positive advantage and lowers the other's."""
    from lmforge.align.generate import generate_ids, load_policy

    torch.manual_seed(0)
    model, tok = load_policy(random_target_dir)
    gen = generate_ids(model, tok, ["2+3="], chat=True, n=2, max_new_tokens=6, seed=1)
    batch = gen.to_batch(tok.pad_token_id)
    with torch.no_grad():
        old = token_logprobs(model, batch)
    batch.update(old_logprobs=old, ref_logprobs=old.clone(), advantages=torch.tensor([1.0, -1.0]),
                 rewards=torch.tensor([1.0, 0.0]))
    obj = GRPOObjective(clip_eps=0.2, kl_beta=0.04)
    loss, stats = obj.loss(model, batch)
    assert float(stats["ratio"]) == pytest.approx(obj.count(batch), abs=1e-5)  # ratio 1 per row
    assert float(stats["kl"]) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
        new = token_logprobs(model, batch)
    mask = batch["completion_mask"][:, 1:].bool()
    seq = [(new[r][mask[r]] - old[r][mask[r]]).sum() for r in range(2)]
    assert seq[0] > 0 > seq[1]
