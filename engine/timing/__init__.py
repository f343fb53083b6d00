"""Timing: every prunable layer's time at every level on the target machine.

table (the timing table and its file formats), cpu and cuda24 (the profilers), in_model (timing
inside whole forward passes), cuda_events (GPU timers).
"""
