"""What every aivd HTTP service shares: request-body limits enforced while reading, fair turns on a scarce worker,
and a uvicorn that closes stalled connections. Nothing here knows about inspection; the services import it."""
