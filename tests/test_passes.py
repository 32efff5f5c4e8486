"""Planning a splice's forward passes: a position-ordered partition of minimal cost."""

from __future__ import annotations

import itertools
import random

import torch

from skillforge.runtime.passes import plan_passes


def cost(groups: list[list[int]], pass_cost: int) -> int:
    return sum(len(g) * (g[-1] + 1) + pass_cost for g in groups)


def brute_force(pos: list[int], pass_cost: int, max_passes: int) -> int:
    """Cheapest partition into consecutive groups split only at gaps, by trying every one."""
    gaps = [i + 1 for i in range(len(pos) - 1) if pos[i + 1] > pos[i] + 1]
    best = cost([pos], pass_cost)
    for k in range(1, max_passes):
        for cuts in itertools.combinations(gaps, k):
            bounds = [0, *cuts, len(pos)]
            best = min(best, cost([pos[a:b] for a, b in zip(bounds, bounds[1:])], pass_cost))
    return best


def test_groups_partition_the_positions_in_order():
    pos = torch.tensor([*range(0, 10), *range(12, 28), *range(8010, 8033)])
    groups = plan_passes(pos, pass_cost=1000)
    assert torch.equal(torch.cat(groups), pos)
    # the prefix and seam (26 queries over <= 28 keys) do not pay for the 8k keys of the user turn
    assert [(int(g[0]), int(g[-1])) for g in groups] == [(0, 27), (8010, 8032)]


def test_a_pass_that_costs_more_than_it_saves_is_not_split_off():
    pos = torch.tensor([*range(0, 10), *range(8010, 8033)])
    assert len(plan_passes(pos, pass_cost=10 * 8033)) == 1
    assert len(plan_passes(pos, pass_cost=10 * 8033 - 1000)) == 2
    assert plan_passes(torch.tensor([5]), pass_cost=0)[0].tolist() == [5]
    assert plan_passes(torch.tensor([], dtype=torch.long), pass_cost=0) == []


def test_plan_is_optimal_against_brute_force():
    rng = random.Random(0)
    for trial in range(60):
        pos = sorted(rng.sample(range(2000), rng.randint(2, 14)))
        pass_cost = rng.choice([0, 500, 5000, 50_000])
        groups = [g.tolist() for g in plan_passes(torch.tensor(pos), pass_cost, max_passes=3)]
        assert sum(groups, []) == pos
        assert len(groups) <= 3
        assert cost(groups, pass_cost) == brute_force(pos, pass_cost, 3), (pos, pass_cost, groups)
