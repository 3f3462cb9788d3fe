"""How a request samples (SamplingParams) and the request itself (GenerateRequest).

Torch-free: the language imports it.
"""
