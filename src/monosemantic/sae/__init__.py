"""Sparse autoencoders: the model, neuron resampling."""
