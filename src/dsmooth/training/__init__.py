"""Training: classifiers (optionally with Gaussian noise augmentation) and denoisers
(MSE, Stab, Clf objectives), with exact resume, timed checkpoints and metrics logs."""
