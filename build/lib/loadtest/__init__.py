"""Load tests: realistic /rank traffic (traffic.py) and the Locust user driving it."""
