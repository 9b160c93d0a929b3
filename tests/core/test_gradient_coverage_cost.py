"""The first step's gradient-coverage check costs a reduction per gradient, not a tensor of its size, and one read
of the results (issue 32, item 12): it runs inside the backward, at the peak of a full cell's memory."""

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from training_core.trackers.gradients import GradientCoverage


def _backward_allocations(model, coverage) -> list[int]:
    x = torch.ones(8, 1000)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x).sum().backward()
    sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == torch._C._profiler._EventType.Allocation and node.extra_fields.alloc_size > 0:
            sizes.append(node.extra_fields.alloc_size)
    coverage.remove()
    return sizes


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second, self.unused = nn.Linear(1000, 1000), nn.Linear(1000, 1000), nn.Linear(10, 10)
        nn.init.zeros_(self.second.weight)  # `first` then gets an all-zero gradient

    def forward(self, x):
        return self.second(self.first(x))


def test_the_check_allocates_no_tensor_of_a_gradients_size_and_still_finds_zero_and_missing_gradients():
    model = Two()
    coverage = GradientCoverage(model)
    numel = 1000 * 1000
    sizes = _backward_allocations(model, coverage)
    assert sizes.count(4 * numel) == 2  # the two weights' fp32 gradients, as without the check
    assert numel not in sizes  # no bool tensor of the weight's size (the old `grad.ne(0).any()`)
    report = coverage.finish()
    assert report["no_gradient"] == {"unused": 110}
    assert report["zero_gradient"] == {"first": 1000 * 1000 + 1000}  # its weight and bias


def test_micro_batches_combine_and_a_later_non_zero_gradient_counts():
    layer = nn.Linear(4, 1)
    nn.init.zeros_(layer.weight)
    coverage = GradientCoverage(layer)
    layer(torch.zeros(2, 4)).sum().backward()  # weight's gradient is x = 0
    layer(torch.ones(2, 4)).sum().backward()  # then non-zero
    report = coverage.finish()
    assert report["untrained_params"] == 0 and report["flag"] is None
