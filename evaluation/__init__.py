"""wxens evaluation package."""
