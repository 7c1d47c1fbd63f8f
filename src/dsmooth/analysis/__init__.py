"""From result logs to what people read: certified-accuracy tables, settings, plots, the
report page and the denoising grid."""
