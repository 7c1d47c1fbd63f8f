"""f(D(.)) and how it runs: composing a denoiser with a classifier at a sigma, the engine
(precision, backend, batch), building a Smooth from specs, plain accuracy, and the bench."""
