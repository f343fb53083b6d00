"""The database: a pruned, reconstructed weight for every (layer, level).

reconstruct (magnitude, OBS, AdaPrune pruners), store (build, store, read, stitch), gap (global
AdaPrune), nm_pipeline (the little-data 2:4 pipeline).
"""
