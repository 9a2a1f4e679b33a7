"""Real models: preprocessing, output decoding, the model repository and engine."""
