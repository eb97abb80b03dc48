"""Edge-cloud collaboration: which regions are hard enough to send to the cloud, and keeping that share on budget."""
