"""Continuous intake: frames of videos, cameras and network streams (`video`), and images landing in a watched
folder (`watch`), as inspection tasks for `aivd.pipeline.inspect.inspect_tasks`."""

# `aivd watch`'s defaults, here so that the command line can show them without importing watchdog and the database.
SETTLE_S = 1.0  # a file whose size and modification time held this long is taken as whole
QUEUE_SIZE = 16  # paths waiting between the watcher and the inspector
