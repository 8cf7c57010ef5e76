"""Video decoding and frame sampling shared by training, export checks and the service."""
