"""Training commands. The only part of aivd that imports torch."""
