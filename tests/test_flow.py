"""Shared flow-matching samplers are exact on a path whose velocity is known in closed form."""

import torch

from models.flow import euler_sample, interpolate, mean_flow_sample, mean_flow_target, renoise_sample, time_grid


def exact_velocity(target):
    # data is the single point `target`: along x_t = (1 - t) x0 + t n, v = n - x0 = (x_t - x0) / t
    return lambda x, t: (x - target) / t.clamp_min(1e-6).reshape(-1, *[1] * (x.dim() - 1))


def test_euler_reaches_the_data_point():
    target = torch.randn(3, 5)
    out = euler_sample(exact_velocity(target), torch.randn(3, 5), num_steps=4, shift=3.0)
    torch.testing.assert_close(out, target)


def test_renoise_sampler_predicts_x0():
    target = torch.randn(2, 4)
    times = time_grid(4, shift=5.0)[:-1]
    out = renoise_sample(exact_velocity(target), torch.randn(2, 4), times)
    torch.testing.assert_close(out, target)


def test_mean_flow_one_step_is_exact_with_exact_average_velocity():
    target = torch.randn(2, 4)
    u = lambda z, r, t: (z - target) / t.reshape(-1, 1)  # noqa: E731 - straight path: average == instantaneous
    torch.testing.assert_close(mean_flow_sample(u, torch.randn(2, 4), 1), target)


def test_mean_flow_target_equals_prediction_for_exact_field():
    target = torch.randn(2, 4)
    noise = torch.randn(2, 4)
    t = torch.tensor([0.9, 0.6])
    r = torch.tensor([0.2, 0.0])
    z = interpolate(target, noise, t)
    u = lambda z, r, t: (z - target) / t.reshape(-1, 1)  # noqa: E731
    pred, goal = mean_flow_target(u, z, r, t, noise - target)
    torch.testing.assert_close(pred, goal)
