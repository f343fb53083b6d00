"""The vocabulary every part of the method shares; imports nothing else from engine.

profile (the TOML profile as frozen dataclasses), grid (levels and N:M patterns), masks (exact
top-k and N:M masks), events (the run log), measure (the robust timer), environment (machine
fingerprint), atomic (atomic file writes), errors.
"""
