"""Small companion programs for local stacks and integration checks (not used by the service)."""
