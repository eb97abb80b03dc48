"""Continuous intake: frames of videos, cameras and network streams (`video`), and images landing in a watched
folder (`watch`), as inspection tasks for `aivd.pipeline.inspect.inspect_tasks`."""
