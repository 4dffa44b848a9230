"""generation_client."""
