"""The worker: loads the user's handler and runs it for requests from any gateway."""
