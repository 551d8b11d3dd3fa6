"""The synthetic Ali-CCP generator's parts; `training.generate` puts them together."""
