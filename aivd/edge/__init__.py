"""Edge tier: fast detectors that say where the defects are."""
