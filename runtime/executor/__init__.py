"""Running the model: one forward step of a scheduled batch, the sampler, attention
backends, models."""
