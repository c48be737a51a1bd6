"""wxens pipeline package."""
