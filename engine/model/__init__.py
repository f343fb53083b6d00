"""The model and its data: what is compressed and how it is judged.

sources (load a model from the profile, trace its prunable layers; add a model family here),
data (calibration and held-out batches), losses (calibration losses, held-out metrics),
layer_inputs (each layer's inputs for reconstruction), reuse (activation caching by block).
"""
