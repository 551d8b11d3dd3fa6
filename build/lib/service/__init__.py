"""The ranking service: POST /rank over an exported ESMM model."""
