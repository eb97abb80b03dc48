"""Edge deployment: `aivd export` writes a pack for another runtime or precision (int8, OpenVINO), calibrated on
inputs recorded from the real pipeline. Above `aivd.pipeline` and `aivd.packs`, which it uses, so that neither
depends on it."""
