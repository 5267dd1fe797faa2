"""The coordinator: membership and discovery (shared state arrives with its own issue)."""
