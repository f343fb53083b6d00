"""The search: from a timing table and a target to the per-layer allocation.

dp (the Numba DP under a time budget), budget (the problem: budget, costs, allocations), spdy
(SPDY's local search over sensitivity coefficients), scoring (calibration loss of an allocation),
baselines (uniform, global magnitude, prior DP, squared-error DP).
"""
